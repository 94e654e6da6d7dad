"""A tiny random Llama and its tokenizer, made offline in well under a second.

The hub is out of reach here, and the real base model takes seconds to load and minutes to
train: tests of loading, training and serving use this model instead. It copies what matters of
SmolLM2-135M-Instruct (Llama architecture with grouped-query attention and tied embeddings;
``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` as token ids 0, 1, 2; SmolLM2's ChatML chat
template with its default system prompt; eos ``<|im_end|>``, which also pads, as in SmolLM2's
GGUF), so code that works on it works on the real model.

Usage, once per session or module::

    @pytest.fixture(scope="session")
    def tiny_model(tmp_path_factory):
        return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2

# SmolLM2-135M-Instruct's own template (read from its GGUF)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

STAMP = "tiny-model.json"
VERSION = 1  # bump when the model or tokenizer below changes: cached folders are rebuilt

_SUBJECTS = ["I", "You", "The model", "My friend", "The support team", "Nobody", "Everyone"]
_VERBS = ["can read", "will open", "should know", "wants", "answers", "likes", "needs"]
_OBJECTS = [
    "the news",
    "the pod bay doors",
    "a good morning",
    "the capital of France",
    "your question",
    "this spreadsheet",
    "the weather today",
]
_LINES = [
    "Hello",
    "I'm an AI",
    "Open the pod bay doors please",
    "No",
    "Well, if you insist",
    "Good morning",
    "Hey",
    "Can you read me the news?",
    "No, I can't",
    "Is there something you can do?",
    "You should know",
    "Oh okey",
    "Yeah",
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "What is the capital of France? Paris is the capital of France.",
    "system user assistant 0123456789 .,;:!?'\"()-",
]


def make_tiny_model(
    folder: Path, *, vocab_words: list[str] | None = None, tied: bool = True
) -> Path:
    """Write a tiny random Llama causal LM and its tokenizer into `folder`; return `folder`.

    `vocab_words` are words the tokenizer learns whole (as " word", after a space), so that a
    test can teach the model a reply of a few tokens. `tied=False` unties the output layer from
    the embeddings: a random model with tied ones (as SmolLM2 has them) repeats its last input
    token, the newline after `<|im_start|>assistant`, so its replies are empty once stripped; an
    untied one says something (nonsense), for tests that need non-empty answers. A folder
    already made with the same arguments is reused as is, so a session-scoped fixture pays for
    it once.
    """
    folder = Path(folder)
    words = list(vocab_words or [])
    stamp = {"version": VERSION, "vocab_words": words, **({} if tied else {"tied": False})}
    try:
        if json.loads((folder / STAMP).read_text()) == stamp:
            return folder
    except (OSError, ValueError):
        pass
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(words)
    model = _model(len(tokenizer), tied=tied)
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder, safe_serialization=True)
    (folder / STAMP).write_text(json.dumps(stamp))  # last: a folder without it is incomplete
    return folder


def _corpus(words: list[str]) -> list[str]:
    sentences = [f"{s} {v} {o}." for s, v, o in itertools.product(_SUBJECTS, _VERBS, _OBJECTS)]
    sentences += _LINES * 5
    sentences += [
        f"{s} {v} {w}." for w in words for s, v in zip(_SUBJECTS, _VERBS, strict=True)
    ] * 3
    return sentences


def _tokenizer(words: list[str]):
    """A byte-level BPE (any text encodes, no unknown tokens) trained on a small corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512 + 8 * len(words),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(words), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


def _model(vocab_size: int, *, tied: bool = True):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,  # grouped-query attention, as SmolLM2 (9 heads, 3 kv heads)
        max_position_embeddings=2048,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    with torch.random.fork_rng():  # the same weights every time, the caller's RNG untouched
        torch.manual_seed(0)
        return LlamaForCausalLM(config)
