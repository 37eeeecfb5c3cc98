"""The quickstart's model configuration learns: trained briefly on real text, its masked accuracy leaves the
unigram plateau (the trap the blueprint-shaped small model stays in for its whole CPU budget)."""

from __future__ import annotations

import sys

from convert.writer import Options, convert
from perceiver_stream.config import build, load
from perceiver_stream.quickstart import CONFIG, evaluate
from perceiver_stream.train.config import TrainConfig
from tests.conftest import REPO, run, shared_corpora, shared_path


def test_quickstart_model_beats_the_unigram_baseline(tmp_path):
    tokenizer = str(shared_path("tokenizers/xlnet-base-cased"))
    convert(shared_corpora(wiki_files=1, books=3), tmp_path / "shards",
            Options(tokenizer=tokenizer, max_seq_len=32, val_fraction=0.02, workers=2))
    overrides = [f"data.tokenizer={tokenizer}", "model.vocab_size=32000",
                 f"data.streams.wikipedia.local={tmp_path}/shards/wikipedia",
                 f"data.streams.bookcorpus.local={tmp_path}/shards/bookcorpus",
                 f"save_folder={tmp_path}/ckpt", "save_interval=600ba", "max_duration=600ba",
                 "eval_interval=600ba", "eval_first=false", "progress_bar=false", "loggers.tensorboard=null",
                 "data.num_workers=0"]
    result = run([sys.executable, str(REPO / "train.py"), str(CONFIG), *overrides])
    assert result.returncode == 0, result.stderr[-3000:]

    scores = evaluate(build(TrainConfig, load(CONFIG, overrides)), tmp_path / "ckpt" / "latest-rank0.pt")
    print(scores)
    accuracy, baseline = scores["mask_token_accuracy"], scores["unigram_mask_token_accuracy"]
    assert 0.02 < baseline < 0.1
    assert accuracy > 2 * baseline, scores
