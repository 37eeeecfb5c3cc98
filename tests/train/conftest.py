"""Tiny real shards (Wikipedia + books, xlnet, seq 128) for the training tests, converted once."""

from __future__ import annotations

from pathlib import Path

import pytest

from convert.writer import Options, convert
from tests.conftest import REPO, build_once, shared_corpora, shared_path


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    def build(root: Path) -> None:
        tokenizer = str(shared_path("tokenizers/xlnet-base-cased"))
        convert(shared_corpora(wiki_files=4, books=8), root,
                Options(tokenizer=tokenizer, max_seq_len=128, val_fraction=0.05, workers=2))

    return build_once(tmp_path_factory, "tiny-shards", build)


def tiny_overrides(shards: Path, tmp_path: Path, **extra) -> list[str]:
    """Overrides pointing mlm_tiny at the test shards and a private log/checkpoint location."""
    settings = {
        "data.streams.wikipedia.local": shards / "wikipedia",
        "data.streams.bookcorpus.local": shards / "bookcorpus",
        "data.tokenizer": shared_path("tokenizers/xlnet-base-cased"),
        "loggers.tensorboard.log_dir": tmp_path / "tb",
        "progress_bar": "false",
    }
    settings.update(extra)
    return [f"{k}={v}" for k, v in settings.items()]


TRAIN = str(REPO / "train.py")
TINY = str(REPO / "yamls" / "mlm_tiny.yaml")
