"""The quickstart trains the shape and recipe that `tests/train/test_learning.py` shows leaving the unigram
plateau (mlm_tiny's), with its own smaller vocabulary and a longer run: training it again here would repeat that
test at twice the cost."""

from __future__ import annotations

import dataclasses

from perceiver_stream.config import build, load
from perceiver_stream.train.config import TrainConfig
from quickstart import CONFIG
from tests.train.conftest import TINY

SAME = ("model", "optimizer", "scheduler", "global_train_batch_size", "device_train_microbatch_size", "precision",
        "seed")


def test_quickstart_trains_mlm_tiny_shape_and_recipe():
    quickstart, tiny = (build(TrainConfig, load(path, [])) for path in (CONFIG, TINY))
    assert quickstart.model.vocab_size == 8000 and tiny.model.vocab_size == 32000  # its own tokenizer, xlnet's
    quickstart = dataclasses.replace(quickstart, model=dataclasses.replace(quickstart.model, vocab_size=32000))
    for key in SAME:
        assert getattr(quickstart, key) == getattr(tiny, key), key
    assert quickstart.data.max_seq_len == tiny.data.max_seq_len == 128
    assert quickstart.model.local_init
    assert int(quickstart.max_duration.removesuffix("ba")) >= 2 * int(tiny.max_duration.removesuffix("ba"))
