"""xxh64 digests of files: shards are checked against ``index.json``'s, checkpoints against the digest recorded
when they were written (``train/resume.py``)."""

from __future__ import annotations

from pathlib import Path

import xxhash

_CHUNK = 1 << 24  # bytes read at a time: checkpoints and shards are too large to read whole


def update_with_file(digest: xxhash.xxh64, path: Path) -> None:
    """Feed ``path``'s bytes to ``digest``."""
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)


def file_xxh64(path: Path) -> str:
    digest = xxhash.xxh64()
    update_with_file(digest, path)
    return digest.hexdigest()
