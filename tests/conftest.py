"""Shared test fixtures: offline settings and paths to the real data in ../shared."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from convert.sources import Source

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def run(args: list[str], env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command from the repository root, capturing its output; ``env`` adds to the environment."""
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def shared_path(relative: str) -> Path:
    """A path under ../shared, or skip the test with the reason when it is absent (fail under CI, which sets
    PERCEIVER_STREAM_REQUIRE_SHARED=1: a CI run that skipped half the suite would look green)."""
    path = SHARED / relative
    if not path.exists():
        reason = f"{path} is absent (real data lives in ../shared beside the repository)"
        if os.environ.get("PERCEIVER_STREAM_REQUIRE_SHARED") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def shared_corpora(wiki_files: int, books: int) -> dict[str, Source]:
    """The first ``wiki_files`` Wikipedia extracts and ``books`` Gutenberg books of ../shared, as the
    converter's ``wikipedia`` and ``bookcorpus`` streams."""
    wiki = tuple(str(shared_path(f"corpora/wikipedia/enwiki2015_wiki_0{i}")) for i in range(wiki_files))
    book_files = tuple(str(p) for p in sorted(shared_path("corpora/books").glob("*.txt"))[:books])
    return {"wikipedia": Source("files", files=wiki), "bookcorpus": Source("files", files=book_files, fmt="gutenberg")}
