"""The notebook baseline: legacy prompt/completion JSONL the way the original notebook made it.

pandas reads the whole sheet, `iterrows` walks it, a list keeps the previous messages of the
current conversation, every example becomes a dict in one big list, and the list is written with
one `json.dumps` per line at the end. Same rule as `convtune prepare --format prompt-completion
--valid-ratio 0` (context 5, stop on): the output is meant to be byte for byte the same as
`bench/floor.py`'s. This is the yardstick for "at least 5x faster", not code to copy.
Usage: python bench/notebook_baseline.py INPUT.csv OUTPUT.jsonl
"""

import json
import sys

import pandas as pd

CONTEXT = 5
SEPARATOR = "###"


def main(src: str, dst: str) -> None:
    # dtype=str and keep_default_na=False: cells such as "None" or "NA" stay text, empty cells
    # become "" (a notebook with a plain read_csv + fillna("") would lose the former).
    df = pd.read_csv(src, sep=";", dtype=str, keep_default_na=False, encoding="utf-8-sig")
    actor1, actor2 = (str(c).strip() for c in df.columns[:2])
    col1, col2 = df.columns[0], df.columns[1]

    examples = []
    history = []  # "<actor>: <text>" of the current conversation so far
    for _, row in df.iterrows():
        first = row[col1].strip()
        second = row[col2].strip()
        if first == SEPARATOR:
            history = []
            continue
        if first != "":
            history.append(f"{actor1}: {first}")
        if second != "":
            prompt = "\n".join([*history[-CONTEXT:], f"{actor2}:"])
            completion = f" {second}\n{actor1}: "
            examples.append({"prompt": prompt, "completion": completion})
            history.append(f"{actor2}: {second}")

    with open(dst, "w", encoding="utf-8") as out:
        for example in examples:
            out.write(json.dumps(example, ensure_ascii=False) + "\n")
    print(f"{len(examples)} examples written to {dst}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
