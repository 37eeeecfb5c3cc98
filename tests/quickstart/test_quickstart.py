"""README's first command, `make quickstart` (`python quickstart.py`), end to end: fetch, tokenizer, shards,
training, export, evaluation, plot and fill-mask, on its own corpus and tokenizer, in a shortened run. Its yaml
is mlm_tiny's shape and recipe (checked below), so this is also the test that mlm_tiny's recipe learns."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest

from perceiver_stream.config import build, load
from perceiver_stream.train.config import TrainConfig
from quickstart import CONFIG, REPO
from tests.conftest import registry_downloads, run
from tests.train.conftest import TINY

SAME = ("model", "optimizer", "scheduler", "global_train_batch_size", "device_train_microbatch_size", "precision",
        "seed")
# Of the quickstart's 800 batches; its tokenizer trained on every 4th paragraph (a quarter of the time). Measured
# with one thread, as in the suite: on the unigram plateau to batch 250, then <mask> accuracy 0.0595 against the
# unigram's 0.0449 at 300, 0.0719 / 0.0408 (1.76x) at 400, 0.0801 / 0.0432 (1.85x) at 450.
BATCHES = 450
TOKENIZER_EVERY = 4


def test_quickstart_trains_mlm_tiny_shape_and_recipe():
    quickstart, tiny = (build(TrainConfig, load(path, [])) for path in (CONFIG, TINY))
    assert quickstart.model.vocab_size == 8000 and tiny.model.vocab_size == 32000  # its own tokenizer, xlnet's
    quickstart = dataclasses.replace(quickstart, model=dataclasses.replace(quickstart.model, vocab_size=32000))
    for key in SAME:
        assert getattr(quickstart, key) == getattr(tiny, key), key
    assert quickstart.data.max_seq_len == tiny.data.max_seq_len == 128
    assert quickstart.model.local_init
    assert int(quickstart.max_duration.removesuffix("ba")) >= 2 * int(tiny.max_duration.removesuffix("ba"))


@pytest.mark.slow
@pytest.mark.timeout(1200)  # 2.3 minutes alone on 2 cores, 4-5 in the suite: rendering, tokenizer, conversion, training
def test_quickstart_learns_end_to_end(tmp_path):
    out = tmp_path / "quickstart"
    result = run([sys.executable, str(REPO / "quickstart.py"), "--out", str(out),
                  "--download-dir", str(registry_downloads()), "--tokenizer-every", str(TOKENIZER_EVERY),
                  "--set", f"max_duration={BATCHES}ba", f"eval_interval={BATCHES}ba", f"save_interval={BATCHES}ba"],
                 timeout=1100)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    print(summary)
    assert 0.02 < summary["unigram_mask_token_accuracy"] < 0.1
    assert summary["mask_token_accuracy"] > 1.5 * summary["unigram_mask_token_accuracy"], summary
    assert (out / "hf" / "config.json").exists() and (out / "curves.png").stat().st_size > 10_000
    predictions = [line for line in result.stdout.splitlines() if "  ->  " in line]
    assert len(predictions) == 4, result.stdout[-2000:]
    manifests = [json.loads((out / "shards" / name / "train" / "manifest.json").read_text())
                 for name in ("wikipedia", "bookcorpus")]
    assert all(manifest["counts"]["samples"] > 0 for manifest in manifests), manifests
