"""Graders against values computed by hand from each metric's definition."""

from __future__ import annotations

import math

import pytest

from convtune.errors import OptionError
from convtune.evaluation.graders import (
    DEFAULT_GRADERS,
    JudgeError,
    parse_grader,
    parse_graders,
    parse_judge_score,
)

PROMPT = [{"role": "user", "content": "Where does the cat sit?"}]
CAT_ON_MAT = ("the cat sat on the mat", "the cat sat on a mat")  # answer, reference


def score(spec: str, answer: str, reference: str) -> float:
    return parse_grader(spec).score(answer, reference, PROMPT)


def test_default_graders_parse_and_carry_their_names():
    assert [g.name for g in parse_graders(DEFAULT_GRADERS)] == list(DEFAULT_GRADERS)
    names = [parse_grader(s).name for s in ("rouge_1", "ROUGE_5", "gleu", "string_check:ILIKE")]
    assert names == ["rouge_1", "rouge_5", "gleu", "string_check_ilike"]


def test_fuzzy_match_is_the_indel_ratio():
    # LCS(kitten, sitting) = "ittn" (4): Indel distance 6 + 7 - 2*4 = 5 over 13 characters.
    assert score("fuzzy_match", "kitten", "sitting") == pytest.approx(1 - 5 / 13)
    assert score("fuzzy_match", "sitting", "kitten") == pytest.approx(8 / 13)  # symmetric
    assert score("fuzzy_match", "Paris", "Paris") == 1.0
    assert score("fuzzy_match", "abc", "xyz") == 0.0


def test_bleu_identical_disjoint_and_by_hand():
    assert score("bleu", "the quick brown fox jumps", "the quick brown fox jumps") == 1.0
    assert score("bleu", "a b c d", "w x y z") == 0.0
    # 1..4-gram precisions 5/6, 3/5, 2/4, 1/3; same length: no brevity penalty.
    by_hand = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** (1 / 4)
    assert score("bleu", *CAT_ON_MAT) == pytest.approx(by_hand)
    # No 3-gram matches: exp smoothing gives 1 / (2 * 1); no 4-gram at all: effective order 3.
    smoothed = (2 / 3 * 1 / 2 * 1 / 2) ** (1 / 3)
    assert score("bleu", "the cat sat", "the cat ran") == pytest.approx(smoothed)
    # Two of six reference words: all-matching 1- and 2-grams, brevity penalty exp(1 - 6/2).
    assert score("bleu", "the cat", "the cat sat on the mat") == pytest.approx(math.exp(-2))


def test_gleu_is_min_of_ngram_precision_and_recall():
    # 1..4-grams: 5 + 3 + 2 + 1 = 11 shared of 6 + 5 + 4 + 3 = 18 on either side.
    assert score("gleu", *CAT_ON_MAT) == pytest.approx(11 / 18)


def test_rouge_f_measures_by_hand():
    # LCS "the cat sat": precision 3/3, recall 3/6, F = 2 * 1 * 0.5 / 1.5.
    assert score("rouge_l", "the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    # LCS "the cat sat on mat" (5 of 6 either way).
    assert score("rouge_l", *CAT_ON_MAT) == pytest.approx(5 / 6)
    # 3 shared bigrams of 5 on each side.
    assert score("rouge_2", *CAT_ON_MAT) == pytest.approx(0.6)
    # lower-cased, punctuation dropped, no stemming: "sits" is not "sat".
    assert score("rouge_1", "The CAT, sits!", "the cat sat") == pytest.approx(2 / 3)
    # words in any script count (rouge-score's own tokenizer would keep only [a-z0-9]).
    precision, recall = 1 / 3, 1 / 2
    f_measure = 2 * precision * recall / (precision + recall)
    assert score("rouge_1", "Café au lait", "café noir") == pytest.approx(f_measure)


@pytest.mark.parametrize("spec", ["fuzzy_match", "bleu", "gleu", "rouge_1", "rouge_5", "rouge_l"])
def test_empty_texts_are_defined(spec):
    assert score(spec, "", "") == 1.0
    assert score(spec, "an answer", "") == 0.0
    assert score(spec, "", "a reference") == 0.0
    if spec != "fuzzy_match":  # word metrics: no word on either side is a match
        assert score(spec, "  ", "\n") == 1.0
    if spec.startswith("rouge"):  # ROUGE's words are letters and digits only
        assert score(spec, " ... ", "?") == 1.0


@pytest.mark.parametrize(
    ("operation", "answer", "reference", "expected"),
    [
        ("eq", "Paris", "Paris", 1.0),
        ("eq", "paris", "Paris", 0.0),
        ("eq", "Paris.", "Paris", 0.0),
        ("eq", "", "", 1.0),
        ("ne", "Paris", "Paris", 0.0),
        ("ne", "paris", "Paris", 1.0),
        ("like", "It is Paris.", "Paris", 1.0),
        ("like", "it is paris.", "Paris", 0.0),
        ("like", "Rate: 50%", "5_%", 0.0),  # no SQL wildcards: % and _ are characters
        ("like", "Rate: 5_%", "5_%", 1.0),
        ("like", "anything", "", 1.0),  # every text contains the empty reference
        ("ilike", "IT IS PARIS", "Paris", 1.0),
        ("ilike", "Lyon", "Paris", 0.0),
        ("ilike", "", "Paris", 0.0),
    ],
)
def test_string_check_truth_table(operation, answer, reference, expected):
    assert score(f"string_check:{operation}", answer, reference) == expected


def test_unknown_graders_are_option_errors_listing_the_known_ones():
    with pytest.raises(OptionError) as unknown:
        parse_grader("rouge_6")
    assert "rouge_l" in str(unknown.value) and "string_check:eq" in str(unknown.value)
    with pytest.raises(OptionError, match="string_check operation"):
        parse_grader("string_check:contains")
    with pytest.raises(OptionError, match="embedding model"):
        parse_grader("cosine")
    with pytest.raises(OptionError, match="given twice"):
        parse_graders(["bleu", "fuzzy_match", "BLEU"])


def test_meteor_without_wordnet_is_a_clear_option_error(monkeypatch, tmp_path):
    import nltk.data

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])  # a machine without NLTK data
    with pytest.raises(OptionError, match=r"unavailable here.*WordNet"):
        parse_grader("meteor")


def rubric(tmp_path, text="Right facts matter more than style."):
    path = tmp_path / "rubric.txt"
    path.write_text(text, encoding="utf-8")
    return f"score_model:{path}"


def test_score_model_asks_the_judge_and_normalises(tmp_path):
    asked = []

    def judge(messages):
        asked.append(messages)
        return replies.pop(0)

    replies = ["8", "Score: 7/10", "Mostly right, one fact missing.\n**Score:** 6", "9 out of 10"]
    grader = parse_grader(rubric(tmp_path), judge=judge)
    assert grader.name == "score_model" and grader.uses_model
    scores = [grader.score("On the mat.", "The cat sits on the mat.", PROMPT) for _ in range(4)]
    assert scores == pytest.approx([0.8, 0.7, 0.6, 0.9])
    text = "\n".join(m["content"] for m in asked[0])
    for part in ("Right facts matter", "Where does the cat sit?", "The cat sits on", "On the mat."):
        assert part in text


def test_score_model_unparseable_replies_are_judge_errors(tmp_path):
    grader = parse_grader(rubric(tmp_path), judge=lambda messages: "I cannot grade this answer.")
    with pytest.raises(JudgeError, match="I cannot grade this answer"):
        grader.score("x", "y", PROMPT)
    with pytest.raises(JudgeError, match="outside"):
        parse_judge_score("Score: 12")
    assert parse_judge_score("I'd say 7.5, since it misses a detail.") == 0.75
    assert parse_judge_score("-1? no: 3") == 0.3  # the first number in range


def test_score_model_needs_a_rubric_and_a_judge(tmp_path):
    with pytest.raises(OptionError, match="rubric file"):
        parse_grader("score_model")
    with pytest.raises(OptionError, match="no such rubric file"):
        parse_grader(f"score_model:{tmp_path / 'missing.txt'}", judge=lambda m: "1")
    with pytest.raises(OptionError, match="empty"):
        parse_grader(rubric(tmp_path, "  \n"), judge=lambda m: "1")
    with pytest.raises(OptionError, match="judge"):
        parse_grader(rubric(tmp_path))
