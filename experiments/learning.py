"""Does the model learn? Ours, transformers' ``PerceiverForMaskedLM`` and ``BertForMaskedLM`` (BERT-mini: what a
user would pretrain instead) for the same wall-clock budget.

All train on the same samples of ../shared text (Wikipedia extracts and Gutenberg books, the real ``xlnet-base-cased``
vocabulary, seq 128, batch 32, 64 latents x 256 channels, 128 input channels, 4 latent self-attention layers): ours
through the project's trainer (experiments/mlm_comparison.yaml: whole-word masking, ``model.local_init``, Lamb 5e-3,
half of each epoch from each corpus), on the training files converted once into shards; transformers' with its
``Trainer`` and ``DataCollatorForWholeWordMask``, AdamW 1e-3, and so is BERT-mini (4 layers, 256 hidden, 4 heads,
FFN 1024) with the same vocabulary. All are scored on held-out text (one Wikipedia extract file and 13 books that are
not trained on) with the same fixed whole-word masks where every selected word is ``<mask>``: the accuracy is on
``<mask>`` positions only, beside always guessing the most frequent training token on the same positions.

    python -m experiments.learning [--minutes 10] [--set model.local_init=false ...] [--skip-hf] [--skip-bert]

``--set`` takes train.py's keys (``seed=N``, ``data.mask_prob=0.4``, ``'optimizer.adam_params=[token_embedding]'
optimizer.adam_lr=0.001``, ``scheduler.t_warmup=100ba``). Prints a last-line JSON object: ``ours_mask_accuracy``,
``hf_mask_accuracy``, ``bert_mask_accuracy``, ``unigram_accuracy``, ``ours_batches``, ``hf_batches``,
``bert_batches``, per-corpus figures, ours' curve (batches -> accuracy on a small held-out subset, scoring time not
counted in the budget) with the batch where it left the plateau, and ``ours_checkpoints``: the directory holding ours'
initial and trained checkpoints (``initial.pt``, ``trained.pt``; experiments/encoder_stages.py reads them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from experiments.competitors import bert_mini_mlm, perceiver_mlm, train_hf
from experiments.corpora import CACHE, Scorer, mean, prepare_corpora, require_shared
from experiments.pretraining import fresh_directory, pretrain, pretraining_config

PROG = "python -m experiments.learning"


def main() -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget of each model")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of ours' experiments/mlm_comparison.yaml (train.py's keys)")
    parser.add_argument("--hf-lr", type=float, default=1e-3)
    parser.add_argument("--bert-lr", type=float, default=1e-3)
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--skip-bert", action="store_true")
    parser.add_argument("--eval-samples", type=int, default=1024, help="held-out samples per corpus")
    parser.add_argument("--eval-every", type=float, default=60.0, help="seconds of training between curve points")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    parser.add_argument("--cache", type=Path, default=CACHE, help="converted corpora (reused by every harness)")
    args = parser.parse_args()
    require_shared(PROG)
    if args.threads:
        torch.set_num_threads(args.threads)
    corpora = prepare_corpora(args.cache, pretraining_config(args.set, max_steps=None).data.max_seq_len)
    cfg = pretraining_config(args.set, max_steps=None, shards=corpora.shards)
    scorer = Scorer(corpora.held_out, corpora.tokenizer, corpora.most_frequent, args.eval_samples)
    curve_scorer = Scorer(corpora.held_out, corpora.tokenizer, corpora.most_frequent, 128)
    ours = pretrain(cfg, fresh_directory(), scorer, minutes=args.minutes, curve=(curve_scorer, args.eval_every))
    print(json.dumps({"ours": ours.figures()}), flush=True)
    peers = {}
    if not args.skip_hf:
        peers["hf"] = train_hf(perceiver_mlm(cfg), cfg, corpora.train, corpora.tokenizer, scorer,
                               minutes=args.minutes, lr=args.hf_lr)
    if not args.skip_bert:
        peers["bert"] = train_hf(bert_mini_mlm(cfg), cfg, corpora.train, corpora.tokenizer, scorer,
                                 minutes=args.minutes, lr=args.bert_lr)
    unigram = mean(scorer.unigram)
    result = {
        "minutes": args.minutes, "set": args.set,
        "most_frequent_token": corpora.tokenizer.convert_ids_to_tokens(corpora.most_frequent),
        "unigram_accuracy": round(unigram, 4),
        "ours_mask_accuracy": round(mean(ours.accuracy), 4), "ours_batches": ours.batches,
        "ours_vs_unigram": round(mean(ours.accuracy) / unigram, 2),
    }
    for name in ("hf", "bert"):
        peer = peers.get(name)
        result[f"{name}_mask_accuracy"] = None if peer is None else round(mean(peer.accuracy), 4)
        result[f"{name}_batches"] = None if peer is None else peer.batches
        result[f"{name}_vs_unigram"] = None if peer is None else round(mean(peer.accuracy) / unigram, 2)
    result["per_corpus"] = {"unigram": scorer.unigram, "ours": ours.accuracy,
                            **{name: peer.accuracy for name, peer in peers.items()}}
    result.update({"ours_left_plateau_at_batch": ours.left_plateau, "ours_curve": ours.curve,
                   "ours_checkpoints": str(ours.directory)})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
