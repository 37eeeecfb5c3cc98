"""Real shards for the data tests, converted once per session from ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest

from perceiver_stream.convert.sources import Source
from perceiver_stream.convert.writer import Options, convert
from tests.conftest import build_once, shared_path


def convert_once(tmp_path_factory, tokenizer: str, files: list[str], max_seq_len: int, name: str) -> Path:
    def build(out: Path) -> None:
        paths = tuple(str(shared_path(f"corpora/wikipedia/{f}")) for f in files)
        convert({".": Source("files", files=paths)}, out,
                Options(tokenizer=str(shared_path(f"tokenizers/{tokenizer}")), max_seq_len=max_seq_len,
                        val_fraction=0.02, workers=2))

    return build_once(tmp_path_factory, name, build)


@pytest.fixture(scope="session")
def xlnet_shards(tmp_path_factory) -> Path:
    """At least 10,000 real 128-token samples of the 2015 Wikipedia extracts, xlnet tokenizer."""
    files = [f"enwiki2015_wiki_0{i}" for i in range(6)]
    return convert_once(tmp_path_factory, "xlnet-base-cased", files, 128, "xlnet128")


@pytest.fixture(scope="session")
def bert_shards(tmp_path_factory) -> Path:
    return convert_once(tmp_path_factory, "bert-base-uncased", ["enwiki2021_wiki_00"], 128, "bert128")

