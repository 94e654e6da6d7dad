"""The SHA-256 of a file, read in chunks: how uploads are known to be identical.

Both backends reuse an earlier upload of the same bytes, and the worker registers its results
file the same way; one function, so "the same file" means the same thing everywhere.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    """Hex digest of the file's bytes, in 1 MiB reads (memory stays flat on large files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
