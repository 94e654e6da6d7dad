"""The floor: the least code that writes the same legacy prompt/completion JSONL.

A bare `csv.reader` loop, a deque of the last 5 messages, one `json.dumps` per reply. No
checks, no split, no tokens, no error handling: what any implementation must at least spend.
Usage: python bench/floor.py INPUT.csv OUTPUT.jsonl
"""

import csv
import json
import sys
from collections import deque


def main(src: str, dst: str, context: int = 5) -> None:
    with open(src, encoding="utf-8-sig", newline="") as f, open(dst, "w", encoding="utf-8") as out:
        rows = csv.reader(f, delimiter=";")
        a1, a2 = (c.strip() for c in next(rows)[:2])
        window: deque[str] = deque(maxlen=context)
        for row in rows:
            first, second = row[0].strip(), row[1].strip()
            if first == "###":
                window.clear()
                continue
            if first:
                window.append(f"{a1}: {first}")
            if second:
                prompt = "\n".join([*window, f"{a2}:"])
                record = {"prompt": prompt, "completion": f" {second}\n{a1}: "}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                window.append(f"{a2}: {second}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
