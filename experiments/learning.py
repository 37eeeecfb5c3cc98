"""Does the model learn? Ours, transformers' ``PerceiverForMaskedLM`` and ``BertForMaskedLM`` (BERT-mini: what a
user would pretrain instead) for the same wall-clock budget.

Both train on the same packed samples of ../shared text (Wikipedia extracts and Gutenberg books, the real
``xlnet-base-cased`` vocabulary, seq 128, batch 32, 64 latents x 256 channels, 128 input channels, 4 latent
self-attention layers): ours with its own loop, whole-word masking collator and the recipe README documents
(``model.local_init``, Lamb 5e-3); transformers'
with its ``Trainer`` and ``DataCollatorForWholeWordMask``, AdamW 1e-3, and so is BERT-mini (4 layers, 256 hidden,
4 heads, FFN 1024) with the same vocabulary. All are scored on held-out text
(one Wikipedia extract file and 13 books that are not trained on) with the same fixed whole-word masks where
every selected word is ``<mask>``: the accuracy is on ``<mask>`` positions only, beside always guessing
the most frequent training token on the same positions.

    python bench/learning.py [--minutes 10] [--set model.local_init=false ...] [--skip-hf] [--skip-bert]

Prints a last-line JSON object: ``ours_mask_accuracy``, ``hf_mask_accuracy``, ``bert_mask_accuracy``,
``unigram_accuracy``, ``ours_batches``, ``hf_batches``, ``bert_batches``, per-corpus figures and ours' curve
(batches -> accuracy on a small held-out subset, evaluation time not counted in the budget) with the batch where it
left the plateau.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from perceiver_stream.config import build
from perceiver_stream.convert.input import Stats
from perceiver_stream.convert.packing import Packer, tokenize
from perceiver_stream.convert.sources import Source
from perceiver_stream.data.format import WORD_CONTINUATION, is_word_token
from perceiver_stream.data.masking import IGNORE_INDEX, MaskingConfig, MLMCollator
from perceiver_stream.model import PerceiverMLM, PerceiverMLMConfig
from perceiver_stream.model.hf import to_hf_config
from perceiver_stream.optim.build import OptimizerConfig, build_optimizer

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
HELD_OUT_BOOKS = 13
EVAL_SEED = 20261128
PLATEAU_FACTOR = 1.5  # left the plateau: mask accuracy above this multiple of the unigram accuracy
BERT_MINI = {"layers": 4, "hidden": 256, "heads": 4, "ffn": 1024}  # Google's BERT-mini (Turc et al. 2019)

# The issue's comparison shape; ours takes the same widths (transformers' decoder is fixed at 8 heads x 256).
DEFAULTS = {
    "model": {
        "vocab_size": 32000, "max_seq_len": 128, "num_latents": 64, "num_latent_channels": 256,
        "encoder": {"num_input_channels": 128, "num_cross_attention_qk_channels": 256,
                    "num_cross_attention_v_channels": 256, "num_cross_attention_heads": 8,
                    "num_self_attention_qk_channels": 256, "num_self_attention_v_channels": 256,
                    "num_self_attention_heads": 8, "num_self_attention_layers_per_block": 4},
        "decoder": {"num_cross_attention_qk_channels": 256, "num_cross_attention_v_channels": 128,
                    "num_cross_attention_heads": 8},
        "local_init": True,
    },
    "optimizer": {"name": "lamb", "lr": 0.005, "weight_decay": 0.01},
    "warmup_batches": 50,
    "batch_size": 32,
    "seed": 17,  # initialisation, data order and masking (``--set seed=N``: another run of the same recipe)
}


def corpus_files() -> dict[str, tuple[Source, Source]]:
    """(train, held-out) sources per corpus."""
    wiki = sorted((SHARED / "corpora" / "wikipedia").glob("enwiki2015_wiki_0*"))
    books = sorted((SHARED / "corpora" / "books").glob("*.txt"))
    if not wiki or not books:
        raise SystemExit(f"bench/learning.py: the corpora in {SHARED / 'corpora'} are missing")
    return {
        "wiki": (Source("files", files=tuple(map(str, wiki[:-1])), fmt="wikiextractor"),
                 Source("files", files=(str(wiki[-1]),), fmt="wikiextractor")),
        "books": (Source("files", files=tuple(map(str, books[:-HELD_OUT_BOOKS])), fmt="gutenberg"),
                  Source("files", files=tuple(map(str, books[-HELD_OUT_BOOKS:])), fmt="gutenberg")),
    }


def pack(source: Source, tokenizer, seq_len: int, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, token_type) arrays (S, seq_len) of a source, cached by its files and the tokenizer."""
    key = hashlib.sha256(f"{source.describe()}{seq_len}{tokenizer.name_or_path}".encode()).hexdigest()[:16]
    path = cache / f"{key}.npz"
    if path.exists():
        data = np.load(path)
        return data["ids"], data["types"]
    packer = Packer(seq_len, tokenizer.sep_token_id, tokenizer.pad_token_id, pad_final=False)
    samples = []
    docs = list(source.documents(Stats()))
    for start in range(0, len(docs), 256):
        for ids, types in tokenize(tokenizer, docs[start:start + 256]):
            samples += list(packer.add(ids, types))
    ids = np.stack([s[0] for s in samples]).astype(np.int32)
    types = np.stack([s[1] for s in samples])
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, ids=ids, types=types)
    return ids, types


class Scorer:
    """Fixed whole-word ``<mask>`` masks on held-out samples; scores a model's argmax on them."""

    def __init__(self, held_out: dict[str, tuple[np.ndarray, np.ndarray]], tokenizer, most_frequent: int,
                 per_corpus: int):
        collator = MLMCollator(MaskingConfig(mask_replace_prob=1.0, random_replace_prob=0.0),
                               tokenizer.mask_token_id, tokenizer.all_special_ids, len(tokenizer), seed=EVAL_SEED)
        self.batches: dict[str, list[dict]] = {}
        for name, (ids, types) in held_out.items():
            rows = np.random.default_rng(EVAL_SEED).permutation(len(ids))[:per_corpus]
            records = [{"input_ids": ids[i], "token_type": types[i], "sample_idx": int(i)} for i in rows]
            self.batches[name] = [collator(records[s:s + 64]) for s in range(0, len(records), 64)]
        self.unigram = {name: self._accuracy(lambda b: torch.full_like(b["labels"], most_frequent), name)
                        for name in self.batches}

    def _accuracy(self, predict, name: str) -> float:
        correct = total = 0
        for batch in self.batches[name]:
            labelled = batch["labels"] != IGNORE_INDEX
            correct += int((predict(batch)[labelled] == batch["labels"][labelled]).sum())
            total += int(labelled.sum())
        return correct / total

    @torch.no_grad()
    def score(self, logits_fn) -> dict[str, float]:
        """Accuracy per corpus; ``logits_fn(batch)`` returns (B, L, V) logits."""
        return {name: self._accuracy(lambda b: logits_fn(b).argmax(-1), name) for name in self.batches}


def mean(scores: dict[str, float]) -> float:
    return sum(scores.values()) / len(scores)


def batches(train: dict[str, tuple[np.ndarray, np.ndarray]], batch_size: int, seed: int):
    """Endless batches of records, half from each corpus, each corpus in a fresh permutation per pass."""
    rng = np.random.default_rng(seed)
    names = list(train)
    orders = {n: iter(()) for n in names}
    epoch = dict.fromkeys(names, -1)
    offset = dict(zip(names, np.cumsum([0] + [len(train[n][0]) for n in names[:-1]]), strict=True))
    while True:
        records = []
        for i in range(batch_size):
            name = names[i % len(names)]
            index = next(orders[name], None)
            if index is None:
                epoch[name] += 1
                orders[name] = iter(rng.permutation(len(train[name][0])).tolist())
                index = next(orders[name])
            ids, types = train[name]
            records.append({"input_ids": ids[index], "token_type": types[index],
                            "sample_idx": int(offset[name] + index), "epoch": epoch[name]})
        yield records


def train_ours(settings: dict, train, tokenizer, scorer: Scorer, curve_scorer: Scorer, minutes: float,
               eval_every_s: float, max_steps: int | None = None, snapshot: Callable[[int, dict], None] | None = None,
               snapshot_steps: frozenset[int] = frozenset()) -> dict:
    """Ours with its own loop for ``minutes`` of training (or exactly ``max_steps`` batches); returns the model and
    its initial weights too. After each batch count in ``snapshot_steps``, ``snapshot(step, result)`` gets what a
    run of exactly that many batches would return (the schedule is constant after warmup and the data order does
    not depend on the run's length), scoring time not counted."""
    config = build(PerceiverMLMConfig, settings["model"], "model.")
    torch.manual_seed(settings["seed"])
    model = PerceiverMLM(config)
    initial = {key: value.clone() for key, value in model.state_dict().items()}
    optimizer = build_optimizer(model, build(OptimizerConfig, settings["optimizer"], "optimizer."))
    warmup = settings["warmup_batches"]
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(warmup, 1)))
    # ``--set data.mask_prob=0.4`` and the other masking keys of train.py's ``data:``; absent from DEFAULTS, so the
    # default recipe's settings, and the cache keys made from them, stay what they were before the key existed.
    masking = build(MaskingConfig, settings.get("data", {}), "data.")
    collator = MLMCollator(masking, tokenizer.mask_token_id, tokenizer.all_special_ids, len(tokenizer),
                           seed=settings["seed"])
    full_logits = lambda b: model(b["input_ids"], b["attention_mask"])  # noqa: E731
    curve, left_plateau, trained, step, loss = [], None, 0.0, 0, None
    next_eval = 0.0
    data = batches(train, settings["batch_size"], seed=settings["seed"])
    while trained < minutes * 60 if max_steps is None else step < max_steps:
        if trained >= next_eval:
            model.eval()
            accuracy = mean(curve_scorer.score(full_logits))
            model.train()
            curve.append((step, round(accuracy, 4), None if loss is None else round(float(loss), 3)))
            if left_plateau is None and accuracy > PLATEAU_FACTOR * mean(curve_scorer.unigram):
                left_plateau = step
            next_eval += eval_every_s
        start = time.perf_counter()
        batch = collator(next(data))
        out = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
        loss = F.cross_entropy(out.logits, out.targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        step += 1
        trained += time.perf_counter() - start
        if snapshot is not None and step in snapshot_steps:
            model.eval()
            snapshot(step, {"batches": step, "accuracy": scorer.score(full_logits), "model": model, "initial": initial,
                            "seconds": trained})
            model.train()
    model.eval()
    return {"batches": step, "accuracy": scorer.score(full_logits), "curve": curve, "left_plateau": left_plateau,
            "final_loss": round(float(loss), 3), "model": model, "initial": initial, "seconds": trained}


def perceiver_mlm(settings: dict):
    """transformers' ``PerceiverForMaskedLM`` in ours' shape."""
    from transformers import PerceiverForMaskedLM

    torch.manual_seed(settings["seed"])
    return PerceiverForMaskedLM(to_hf_config(build(PerceiverMLMConfig, settings["model"], "model.")))


def bert_mini_mlm(settings: dict):
    """transformers' ``BertForMaskedLM`` in Google's BERT-mini shape (4 layers, 256 hidden, 4 heads, FFN 1024) with
    ours' vocabulary and sequence length: what a user would pretrain instead."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(settings["seed"])
    model = settings["model"]
    return BertForMaskedLM(BertConfig(vocab_size=model["vocab_size"], hidden_size=BERT_MINI["hidden"],
                                      num_hidden_layers=BERT_MINI["layers"], num_attention_heads=BERT_MINI["heads"],
                                      intermediate_size=BERT_MINI["ffn"], max_position_embeddings=model["max_seq_len"],
                                      type_vocab_size=1))


def train_hf(settings: dict, train, tokenizer, scorer: Scorer, minutes: float, lr: float, model=None,
             max_steps: int | None = None) -> dict:
    """transformers' ``Trainer`` with its whole-word masking on ``model`` (default: ``perceiver_mlm``) for
    ``minutes`` of training (or exactly ``max_steps`` batches), scored by ``scorer``; returns the model too."""
    from datasets import Dataset
    from transformers import DataCollatorForWholeWordMask, Trainer, TrainerCallback, TrainingArguments

    model = perceiver_mlm(settings) if model is None else model
    # Word boundaries reach its collator the one way it takes them for a non-BERT vocabulary: "chinese_ref",
    # the positions that continue a word (without them every SentencePiece token would be a word of its own).
    ids = np.concatenate([ids for ids, _ in train.values()])
    types = np.concatenate([types for _, types in train.values()])
    continuations = [np.flatnonzero(row == WORD_CONTINUATION).tolist() for row in types]
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "chinese_ref": continuations})

    class Budget(TrainerCallback):
        def __init__(self):
            self.start = None

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = self.start or time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if max_steps is None:
                control.should_training_stop = time.perf_counter() - self.start >= minutes * 60

    warnings.filterwarnings("ignore", message="DataCollatorForWholeWordMask is only suitable")
    args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="bench-learning-hf-"), remove_unused_columns=False,
                             per_device_train_batch_size=settings["batch_size"],
                             learning_rate=lr, warmup_steps=settings["warmup_batches"], max_steps=max_steps or 10**9,
                             weight_decay=0.01, report_to=[], save_strategy="no", logging_steps=10**9,
                             dataloader_num_workers=0, use_cpu=True, seed=settings["seed"], disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[Budget()],
                      data_collator=DataCollatorForWholeWordMask(tokenizer, mlm_probability=0.15))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    model.eval()
    accuracy = scorer.score(lambda b: model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits)
    return {"batches": trainer.state.global_step, "accuracy": accuracy, "model": model, "seconds": seconds}


def prepare_corpora(cache: Path, seq_len: int):
    """The xlnet tokenizer, the packed (train, held-out) samples per corpus, and the most frequent training token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(SHARED / "tokenizers" / "xlnet-base-cased"))
    train, held_out = {}, {}
    for name, (train_source, held_source) in corpus_files().items():
        train[name] = pack(train_source, tokenizer, seq_len, cache)
        held_out[name] = pack(held_source, tokenizer, seq_len, cache)
    counts = Counter()
    for ids, types in train.values():
        counts.update(ids[is_word_token(types)].tolist())
    return tokenizer, train, held_out, counts.most_common(1)[0][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget of each model")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of ours' settings (model.*, optimizer.*, warmup_batches, batch_size)")
    parser.add_argument("--hf-lr", type=float, default=1e-3)
    parser.add_argument("--bert-lr", type=float, default=1e-3)
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--skip-bert", action="store_true")
    parser.add_argument("--eval-samples", type=int, default=1024, help="held-out samples per corpus")
    parser.add_argument("--eval-every", type=float, default=60.0, help="seconds of training between curve points")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "bench-learning-cache")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.from_dotlist(args.set)))
    tokenizer, train, held_out, most_frequent = prepare_corpora(args.cache, settings["model"]["max_seq_len"])
    scorer = Scorer(held_out, tokenizer, most_frequent, args.eval_samples)
    curve_scorer = Scorer(held_out, tokenizer, most_frequent, 128)
    ours = train_ours(settings, train, tokenizer, scorer, curve_scorer, args.minutes, args.eval_every)
    print(json.dumps({"ours": {k: v for k, v in ours.items() if k not in ("model", "initial")}}), flush=True)
    peers = {}
    if not args.skip_hf:
        peers["hf"] = train_hf(settings, train, tokenizer, scorer, args.minutes, args.hf_lr)
    if not args.skip_bert:
        peers["bert"] = train_hf(settings, train, tokenizer, scorer, args.minutes, args.bert_lr,
                                 model=bert_mini_mlm(settings))
    unigram = mean(scorer.unigram)
    result = {
        "minutes": args.minutes, "set": args.set, "most_frequent_token": tokenizer.convert_ids_to_tokens(most_frequent),
        "unigram_accuracy": round(unigram, 4),
        "ours_mask_accuracy": round(mean(ours["accuracy"]), 4), "ours_batches": ours["batches"],
        "ours_vs_unigram": round(mean(ours["accuracy"]) / unigram, 2),
    }
    for name in ("hf", "bert"):
        peer = peers.get(name)
        result[f"{name}_mask_accuracy"] = None if peer is None else round(mean(peer["accuracy"]), 4)
        result[f"{name}_batches"] = None if peer is None else peer["batches"]
        result[f"{name}_vs_unigram"] = None if peer is None else round(mean(peer["accuracy"]) / unigram, 2)
    result["per_corpus"] = {"unigram": scorer.unigram, "ours": ours["accuracy"],
                            **{name: peer["accuracy"] for name, peer in peers.items()}}
    result.update({"ours_left_plateau_at_batch": ours["left_plateau"], "ours_curve": ours["curve"]})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
