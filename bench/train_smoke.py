"""Train the ``mlm_tiny`` recipe for a fixed number of samples on real English text (``corpus.py``).

Converts Wikipedia extracts and 40 books with the xlnet tokenizer (or the registry corpus with its own) at seq 128 into
a temporary directory, runs ``perceiver-train mlm_tiny`` on them in one process, and reads the TensorBoard log. Prints a
last-line JSON object with ``tokens_per_s``, ``final_eval_loss``, ``final_masked_accuracy`` (all labelled positions,
BERT's figure) and the figure that shows learning: ``final_mask_token_accuracy`` (``<mask>`` positions only) beside
``final_unigram_mask_token_accuracy`` (always the most frequent target of those positions), and ``corpus``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from corpus import bench_corpus
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from perceiver_stream.convert.writer import Options, convert
from perceiver_stream.data.tokenizer import load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--samples", type=int, default=12800, help="training samples (400 batches of 32)")
    args = parser.parse_args()
    corpus = bench_corpus(books=40)
    tokenizer = corpus.tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        convert(corpus.streams, Path(tmp) / "shards",
                Options(tokenizer=tokenizer, max_seq_len=128, val_fraction=0.05, workers=2))
        streams = [f"data.streams.{name}.local={tmp}/shards/{name}" for name in corpus.streams]
        if "bookcorpus" not in corpus.streams:
            streams.append("data.streams.bookcorpus=null")
        batches = args.samples // 32
        subprocess.run([sys.executable, "-m", "perceiver_stream.train.cli", "mlm_tiny", *streams,
                        f"data.tokenizer={tokenizer}", f"model.vocab_size={len(load_tokenizer(tokenizer))}",
                        f"max_duration={batches}ba", f"eval_interval={batches}ba", "eval_subset_num_batches=8",
                        f"loggers.tensorboard.log_dir={tmp}/tb", "progress_bar=false", "save_folder=null",
                        "callbacks.speed_monitor_window=20"],
                       cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        events = EventAccumulator(f"{tmp}/tb/mlm-tiny")
        events.Reload()

        def last(tag: str) -> float:
            return events.Scalars(tag)[-1].value

        print(json.dumps({
            "corpus": corpus.name,
            "samples": batches * 32,
            "tokens_per_s": round(last("throughput/tokens_per_sec")),
            "final_eval_loss": round(last("metrics/eval/LanguageCrossEntropy"), 3),
            "final_masked_accuracy": round(last("metrics/eval/MaskedAccuracy"), 4),
            "final_mask_token_accuracy": round(last("metrics/eval/MaskTokenAccuracy"), 4),
            "final_unigram_mask_token_accuracy": round(last("metrics/eval/MaskTokenUnigramAccuracy"), 4),
        }))


if __name__ == "__main__":
    main()
