"""Train ``yamls/mlm_tiny.yaml`` for a fixed number of samples on the real corpora in ../shared.

Converts Wikipedia extracts and books (xlnet tokenizer, seq 128) into a temporary directory, runs
``train.py`` on them in one process, and reads the TensorBoard log. Prints a last-line JSON object with
``tokens_per_s``, ``final_eval_loss``, ``final_masked_accuracy`` (all labelled positions, BERT's figure) and the
figure that shows learning: ``final_mask_token_accuracy`` (``<mask>`` positions only) beside
``final_unigram_mask_token_accuracy`` (always the most frequent target of those positions).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from perceiver_stream.convert.sources import Source
from perceiver_stream.convert.writer import Options, convert

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--samples", type=int, default=12800, help="training samples (400 batches of 32)")
    args = parser.parse_args()
    tokenizer = str(SHARED / "tokenizers" / "xlnet-base-cased")
    with tempfile.TemporaryDirectory() as tmp:
        wiki = tuple(str(p) for p in sorted((SHARED / "corpora" / "wikipedia").glob("enwiki2015_wiki_0*")))
        books = tuple(str(p) for p in sorted((SHARED / "corpora" / "books").glob("*.txt"))[:40])
        convert({"wikipedia": Source("files", files=wiki), "bookcorpus": Source("files", files=books, fmt="gutenberg")},
                Path(tmp) / "shards", Options(tokenizer=tokenizer, max_seq_len=128, val_fraction=0.05, workers=2))
        batches = args.samples // 32
        subprocess.run([sys.executable, str(REPO / "train.py"), str(REPO / "yamls" / "mlm_tiny.yaml"),
                        f"data.streams.wikipedia.local={tmp}/shards/wikipedia",
                        f"data.streams.bookcorpus.local={tmp}/shards/bookcorpus", f"data.tokenizer={tokenizer}",
                        f"max_duration={batches}ba", f"eval_interval={batches}ba", "eval_subset_num_batches=8",
                        f"loggers.tensorboard.log_dir={tmp}/tb", "progress_bar=false",
                        "callbacks.speed_monitor_window=20"],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        events = EventAccumulator(f"{tmp}/tb/mlm-tiny")
        events.Reload()

        def last(tag: str) -> float:
            return events.Scalars(tag)[-1].value

        print(json.dumps({
            "samples": batches * 32,
            "tokens_per_s": round(last("throughput/tokens_per_sec")),
            "final_eval_loss": round(last("metrics/eval/LanguageCrossEntropy"), 3),
            "final_masked_accuracy": round(last("metrics/eval/MaskedAccuracy"), 4),
            "final_mask_token_accuracy": round(last("metrics/eval/MaskTokenAccuracy"), 4),
            "final_unigram_mask_token_accuracy": round(last("metrics/eval/MaskTokenUnigramAccuracy"), 4),
        }))


if __name__ == "__main__":
    main()
