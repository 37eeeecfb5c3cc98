"""`yamls/mlm_tiny.yaml` learns in its default run: on held-out `<mask>` positions (where the answer is not in
the input) it predicts well above always guessing the most frequent target of those positions."""

from __future__ import annotations

import pytest

from perceiver_stream.config import build, load
from perceiver_stream.evaluate import mask_accuracy
from perceiver_stream.train.config import TrainConfig
from tests.train.conftest import TINY, tiny_overrides
from tests.train.forked import train


@pytest.mark.slow
def test_mlm_tiny_default_run_leaves_the_unigram_plateau(tiny_shards, tmp_path):
    overrides = tiny_overrides(tiny_shards, tmp_path, save_folder=tmp_path / "ckpt", eval_interval="300ba")
    result = train([TINY, *overrides])
    assert result.returncode == 0, result.stderr[-3000:]
    scores = mask_accuracy(build(TrainConfig, load(TINY, overrides)), tmp_path / "ckpt" / "latest-rank0.pt")
    print(scores)
    assert 0.02 < scores["unigram_mask_token_accuracy"] < 0.1
    assert scores["mask_token_accuracy"] > 1.5 * scores["unigram_mask_token_accuracy"], scores
