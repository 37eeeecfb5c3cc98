"""The tokenizer fingerprint names what a tokenizer does, not how its state is written: the same tokenizer.json with
its scores written with other digits (as another tokenizers release writes them) keeps it, a tokenizer that encodes
differently does not; and shards that recorded the earlier fingerprint are still accepted, another tokenizer's not."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from perceiver_stream.data import DataError, prepare
from perceiver_stream.data.tokenizer import fingerprint, fingerprints, legacy_fingerprint, load_tokenizer
from tests.conftest import shared_path
from tests.data.test_dataset import config

XLNET = "tokenizers/xlnet-base-cased"


def variant(tmp_path: Path, change: Callable[[dict], None]) -> str:
    """The fingerprint of the xlnet tokenizer with ``change`` made to its tokenizer.json."""
    folder = tmp_path / "variant"
    shutil.copytree(shared_path(XLNET), folder)
    state = json.loads((folder / "tokenizer.json").read_text())
    change(state)
    (folder / "tokenizer.json").write_text(json.dumps(state))
    return fingerprint(load_tokenizer(str(folder)))


def seven_digit_scores(state: dict) -> None:
    state["model"]["vocab"] = [[piece, float(f"{score:.7g}")] for piece, score in state["model"]["vocab"]]


def lowercased(state: dict) -> None:
    state["normalizer"] = {"type": "Sequence", "normalizers": [state["normalizer"], {"type": "Lowercase"}]}


def quick_is_rare(state: dict) -> None:
    vocab = state["model"]["vocab"]
    vocab[[piece for piece, _ in vocab].index("▁quick")][1] = -30.0  # 'quick' now splits into smaller pieces


def test_the_fingerprint_is_of_the_encoding_not_of_the_serialized_state(tmp_path):
    tokenizer = load_tokenizer(str(shared_path(XLNET)))
    assert fingerprint(tokenizer) == fingerprint(load_tokenizer(str(shared_path(XLNET))))
    scores = json.loads((shared_path(XLNET) / "tokenizer.json").read_text())["model"]["vocab"]
    assert any(float(f"{s:.7g}") != s for _, s in scores)  # the variant really writes other scores
    assert variant(tmp_path / "a", seven_digit_scores) == fingerprint(tokenizer)
    assert variant(tmp_path / "b", lowercased) != fingerprint(tokenizer)
    assert variant(tmp_path / "c", quick_is_rare) != fingerprint(tokenizer)
    assert fingerprint(load_tokenizer(str(shared_path("tokenizers/bert-base-uncased")))) != fingerprint(tokenizer)
    assert fingerprints(tokenizer) == (fingerprint(tokenizer), legacy_fingerprint(tokenizer))
    assert legacy_fingerprint(tokenizer) != fingerprint(tokenizer)


@pytest.mark.parametrize("recorded", ["legacy", "another"])
def test_shards_that_recorded_the_earlier_fingerprint_are_accepted(xlnet_shards, tmp_path, recorded):
    tokenizer = load_tokenizer(str(shared_path(XLNET)))
    value = legacy_fingerprint(tokenizer) if recorded == "legacy" else "0" * 64
    for split in ("train", "val"):
        manifest = json.loads((xlnet_shards / split / "manifest.json").read_text())
        assert manifest["tokenizer"]["fingerprint"] == fingerprint(tokenizer)
        manifest["tokenizer"]["fingerprint"] = value
        (tmp_path / split).mkdir()
        (tmp_path / split / "manifest.json").write_text(json.dumps(manifest))
    cfg = config(streams={"wikipedia": {"local": str(tmp_path)}}, verify_shards=False)
    if recorded == "legacy":
        assert prepare(cfg).tokenizer_fingerprint == fingerprint(tokenizer)
    else:
        with pytest.raises(DataError, match=f"shards have tokenizer fingerprint {value} .* but the configuration "
                                            f"has {fingerprint(tokenizer)}"):
            prepare(cfg)
