"""Ours pretrained through the project's own path: experiments/mlm_comparison.yaml and ``--set`` overrides built as
train.py builds them (``build_train_config``, ``build_trainer``) and fitted, with the harness's callbacks appended (a
budget of training time, the held-out curve, snapshots). A run leaves a directory of Composer checkpoints, the initial
weights and the trained ones (full checkpoints: ``model.encoder_from`` reads their run description), and its
figures in ``result.json``: what fine-tuning and encoder_stages start from."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from composer import Callback, Logger, State
from composer.utils import checkpoint

from experiments.corpora import REPO, STREAMS, TOKENIZER, Scorer, key_of, mean
from perceiver_stream.checkpoint import load_weights, model_weights, read_checkpoint, recorded_run
from perceiver_stream.config import ConfigError, build, load, to_dict
from perceiver_stream.model import PerceiverMLM, PerceiverMLMConfig
from perceiver_stream.train.callbacks import unwrapped
from perceiver_stream.train.config import TrainConfig, build_train_config
from perceiver_stream.train.trainer import build_trainer

YAML = Path(__file__).with_name("mlm_comparison.yaml")
UNLIMITED = 10**9  # batches: a time budget stops the run
PLATEAU_FACTOR = 1.5  # left the plateau: mask accuracy above this multiple of the unigram accuracy
INITIAL, TRAINED, RESULT = "initial.pt", "trained.pt", "result.json"


def pretraining_config(overrides: list[str], *, max_steps: int | None, shards: Path | None = None) -> TrainConfig:
    """The comparison yaml on the converted training files ``shards`` (``corpora.training_shards``; None: the yaml's
    placeholders, to check the overrides and read the sequence length before converting) for ``max_steps`` batches
    (None: until a time budget stops it), with ``overrides`` (train.py's keys) merged last; a bad key or value stops
    with one line."""
    duration = f"{max_steps or UNLIMITED}ba"
    harness = [f"data.tokenizer={TOKENIZER}", f"max_duration={duration}", f"eval_interval={duration}"]
    if shards is not None:
        harness += [f"data.streams.{stream}.local={shards / stream}" for stream in STREAMS.values()]
    try:
        return build_train_config(load(YAML, [*harness, *overrides]))
    except ConfigError as e:
        raise SystemExit(f"--set: {e}") from None


def cache_directory(cfg: TrainConfig, cache: Path) -> Path:
    """Where a run of fixed length keeps its checkpoints: keyed by its whole configuration (the code is not in the
    key: clear the cache after changing the model or the corpora)."""
    return cache / f"pretrained-{key_of(to_dict(cfg))}"


def fresh_directory() -> Path:
    """Where a run under a time budget (not repeatable, never reused) keeps its checkpoints."""
    return REPO / "runs" / "experiments" / f"pretrained-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def held_out_accuracy(model: PerceiverMLM, scorer: Scorer) -> dict[str, float]:
    with evaluating(model):
        return scorer.score(lambda b: model(b["input_ids"], b["attention_mask"]))


def mlm_from_checkpoint(path: Path) -> PerceiverMLM:
    """The MLM a checkpoint of ours holds, in the shape its run recorded, in eval mode."""
    state = read_checkpoint(path)
    model = PerceiverMLM(build(PerceiverMLMConfig, recorded_run(state).config["model"], "model."))
    load_weights(model, model_weights(state), path)
    return model.eval()


@dataclass
class Pretrained:
    """A pretraining run's directory and figures: batches, training seconds, held-out accuracy per corpus, the last
    batch's loss, and the curve (batch, accuracy, loss) with the batch where it left the plateau."""

    directory: Path
    batches: int
    seconds: float
    accuracy: dict[str, float]
    final_loss: float | None = None
    curve: list[tuple[int, float, float | None]] = field(default_factory=list)
    left_plateau: int | None = None

    @property
    def initial(self) -> Path:
        return self.directory / INITIAL

    @property
    def trained(self) -> Path:
        return self.directory / TRAINED

    def figures(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "directory"}

    def save(self) -> None:
        """``result.json`` last: a directory that has it is complete."""
        (self.directory / RESULT).write_text(json.dumps(self.figures()))

    @classmethod
    def load(cls, directory: Path, scorer: Scorer) -> Pretrained:
        """A finished run, its trained weights scored again (the held-out samples may be others this time)."""
        figures = json.loads((directory / RESULT).read_text())
        figures["accuracy"] = held_out_accuracy(mlm_from_checkpoint(directory / TRAINED), scorer)
        return cls(directory, **figures)


class TrainingClock(Callback):
    """Seconds of training from the first batch's start (data loading included), less Composer's evaluation and
    whatever the harness does ``paused()``; with ``budget_s``, stops the run once they reach it."""

    def __init__(self, budget_s: float | None):
        self.budget_s = budget_s
        self._start: float | None = None
        self._excluded = 0.0
        self._eval_start = 0.0

    @property
    def seconds(self) -> float:
        return 0.0 if self._start is None else time.perf_counter() - self._start - self._excluded

    @contextmanager
    def paused(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._start is not None:
                self._excluded += time.perf_counter() - start

    def batch_start(self, state: State, logger: Logger) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def batch_end(self, state: State, logger: Logger) -> None:
        if self.budget_s is not None and self.seconds >= self.budget_s:
            state.stop_training()

    def eval_start(self, state: State, logger: Logger) -> None:
        self._eval_start = time.perf_counter()

    def eval_end(self, state: State, logger: Logger) -> None:
        if self._start is not None:
            self._excluded += time.perf_counter() - self._eval_start


def last_loss(state: State) -> float | None:
    loss = state.total_loss_dict.get("loss/train/total")
    return None if loss is None else round(float(loss), 3)


class HeldOutCurve(Callback):
    """Mean held-out ``<mask>`` accuracy before the first batch and every ``every_s`` seconds of training while it
    goes on (scoring not counted), with the last batch's loss; notes the batch where it first passes
    ``PLATEAU_FACTOR`` x the unigram accuracy."""

    def __init__(self, scorer: Scorer, every_s: float, clock: TrainingClock):
        self.scorer = scorer
        self.every_s = every_s
        self.clock = clock
        self.next_s = 0.0
        self.points: list[tuple[int, float, float | None]] = []
        self.left_plateau: int | None = None

    def fit_start(self, state: State, logger: Logger) -> None:
        self._score(state, None)

    def batch_end(self, state: State, logger: Logger) -> None:
        if state.get_elapsed_duration() < 1.0 and self.clock.seconds >= self.next_s:
            self._score(state, last_loss(state))

    def _score(self, state: State, loss: float | None) -> None:
        with self.clock.paused():
            accuracy = mean(held_out_accuracy(unwrapped(state), self.scorer))
        batch = int(state.timestamp.batch)
        self.points.append((batch, round(accuracy, 4), loss))
        if self.left_plateau is None and accuracy > PLATEAU_FACTOR * mean(self.scorer.unigram):
            self.left_plateau = batch
        self.next_s += self.every_s


class Snapshots(Callback):
    """After each batch count of ``steps``, the directory a run of exactly that many batches would leave (the
    schedule is constant after warmup and the data order does not depend on the run's length): its checkpoint, the
    run's initial one linked beside it, and its figures; time not counted. ``directory(step)`` names it."""

    def __init__(self, steps: frozenset[int], directory: Callable[[int], Path], initial: Path, scorer: Scorer,
                 clock: TrainingClock):
        self.steps = steps
        self.directory = directory
        self.initial = initial
        self.scorer = scorer
        self.clock = clock

    def batch_end(self, state: State, logger: Logger) -> None:
        step = int(state.timestamp.batch)
        if step not in self.steps:
            return
        with self.clock.paused():
            out = self.directory(step)
            out.mkdir(parents=True, exist_ok=True)
            checkpoint.save_checkpoint(state, str(out / TRAINED))
            (out / INITIAL).unlink(missing_ok=True)
            os.link(self.initial, out / INITIAL)
            snapshot = Pretrained(out, step, round(self.clock.seconds, 1),
                                  held_out_accuracy(unwrapped(state), self.scorer), last_loss(state))
            snapshot.save()
        print(json.dumps({"snapshot": "ours", "batches": step, "mask_accuracy": round(mean(snapshot.accuracy), 4),
                          "minutes": round(snapshot.seconds / 60, 1), "directory": str(out)}), flush=True)


def pretrain(cfg: TrainConfig, out: Path, scorer: Scorer, *, minutes: float | None = None,
             curve: tuple[Scorer, float] | None = None,
             snapshots: tuple[frozenset[int], Callable[[int], Path]] | None = None) -> Pretrained:
    """Fit ``cfg`` with the project's trainer until ``minutes`` of training (None: its ``max_duration``), checkpoints
    before and after in ``out``. ``curve``: (scorer, seconds between points); ``snapshots``: (batch counts, their
    directories)."""
    trainer = build_trainer(cfg)
    out.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(str(out / INITIAL))
    clock = TrainingClock(None if minutes is None else minutes * 60)
    watch = None if curve is None else HeldOutCurve(*curve, clock)
    keep = None if snapshots is None else Snapshots(*snapshots, out / INITIAL, scorer, clock)
    trainer.state.callbacks.extend(callback for callback in (clock, watch, keep) if callback is not None)
    trainer.fit()
    seconds = round(clock.seconds, 1)
    trainer.save_checkpoint(str(out / TRAINED))
    result = Pretrained(out, int(trainer.state.timestamp.batch), seconds,
                        held_out_accuracy(unwrapped(trainer.state), scorer), last_loss(trainer.state))
    if watch is not None:
        result.curve, result.left_plateau = watch.points, watch.left_plateau
    trainer.close()
    result.save()
    return result

