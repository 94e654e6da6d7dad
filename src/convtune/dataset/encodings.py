"""OpenAI's encodings offline: tiktoken's engine with the tables the bpe-openai package ships.

tiktoken itself downloads its tables at first use, which fails offline; bpe-openai bundles
`o200k_base` and `cl100k_base`. Both the counting in this process (`tokens`) and the counting
child process (`token_process`) build their engine here.
"""

from __future__ import annotations

import base64
import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

from ..errors import ConvtuneError

ENCODINGS = ("o200k_base", "cl100k_base")

# The pre-tokenizer patterns of the two encodings, as OpenAI publishes them in tiktoken.
PATTERNS = {
    "cl100k_base": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
    "o200k_base": "|".join(
        [
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ),
}
SPECIAL = {
    "cl100k_base": {"<|endoftext|>": 100257, "<|endofprompt|>": 100276},
    "o200k_base": {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
}


@lru_cache(maxsize=4)
def tiktoken_encoding(name: str):
    """tiktoken's BPE engine for `name`, built from the table bpe-openai ships.

    Only the engine (`CoreBPE`) is kept: `tiktoken.Encoding` would also keep the Python dict of
    ranks alive (about 15 MB for cl100k_base), which counting never needs again.
    """
    from tiktoken._tiktoken import CoreBPE

    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or spec.origin is None:
        raise ConvtuneError(
            "token counting needs the bpe-openai package", hint="pip install bpe-openai"
        )
    table = Path(spec.origin).parent / "data" / f"{name}.tiktoken.gz"
    return CoreBPE(_ranks(name, table), SPECIAL[name], PATTERNS[name])


def _ranks(name: str, table: Path) -> dict[bytes, int]:
    """The encoding's ranks; parsed from the gzipped base64 table once, then read from a
    `marshal` copy in the data directory (15 ms instead of 95: it starts every counting process).
    """
    import marshal
    import os

    from ..state.home import data_dir

    cache = data_dir() / "cache" / f"{name}.ranks.marshal"
    try:
        ranks = marshal.loads(cache.read_bytes())
        if isinstance(ranks, dict) and len(ranks) > 1000:
            return ranks
    except (OSError, ValueError, EOFError, TypeError):
        pass
    ranks = {}
    with gzip.open(table, "rb") as f:
        for line in f:  # line by line: no second copy of the whole table
            token, _, rank = line.partition(b" ")
            if token:
                ranks[base64.b64decode(token)] = int(rank)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        tmp.write_bytes(marshal.dumps(ranks))
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only data directory only costs the parse next time
    return ranks
