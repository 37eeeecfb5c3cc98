"""Our Composer callbacks: fill-mask predictions and linear probes at every eval, a per-batch log of sample identity,
the resume guard, a stop at the first non-finite loss, the first batch's time, torch.compile's cache in checkpoints,
and a stop when another run took the save folder."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch
from composer import Callback, Logger, State
from composer.callbacks import CheckpointSaver
from composer.core import get_precision_context
from composer.utils import dist
from torch.nn.parallel import DistributedDataParallel
from transformers import PreTrainedTokenizerFast

from perceiver_stream.config import ConfigError
from perceiver_stream.probe import ProbeTask, probe_accuracy
from perceiver_stream.remote import upload
from perceiver_stream.train.lease import Lease, SaveFolderInUse
from perceiver_stream.train.resume import write_digests

log = logging.getLogger(__name__)


class FillMaskTable(Callback):
    """At the end of every evaluation, the model's top-5 tokens for each ``<mask>`` of a fixed list of
    sentences, logged as a table (a ``wandb.Table`` with W&B) and to the console, so a dashboard shows what
    the model has learned, not only its loss."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, sentences: list[str], top_k: int = 5):
        self.tokenizer = tokenizer
        self.sentences = [s.replace("<mask>", tokenizer.mask_token) for s in sentences]
        self.top_k = top_k

    @torch.no_grad()
    def predictions(self, state: State) -> list[list[str]]:
        encoded = self.tokenizer(self.sentences, add_special_tokens=False, padding=True, return_tensors="pt")
        input_ids = state.device.tensor_to_device(encoded["input_ids"])
        attention_mask = state.device.tensor_to_device(encoded["attention_mask"])
        module = unwrapped(state)
        was_training = module.training
        module.eval()
        with get_precision_context(state.precision):
            logits = module(input_ids, attention_mask)
        module.train(was_training)
        rows = []
        for ids, row_logits in zip(input_ids, logits, strict=True):
            positions = (ids == self.tokenizer.mask_token_id).nonzero().flatten()
            top = row_logits[positions].float().topk(self.top_k, dim=-1).indices.cpu()
            rows.append([" / ".join(self.tokenizer.convert_ids_to_tokens(t.tolist())) for t in top])
        return rows

    def eval_end(self, state: State, logger: Logger) -> None:
        if not self.sentences:
            return
        rows = [[sentence, " | ".join(predicted)] for sentence, predicted in
                zip(self.sentences, self.predictions(state), strict=True)]
        logger.log_table(columns=["sentence", f"top-{self.top_k} per mask"], rows=rows, name="fill_mask",
                         step=int(state.timestamp.batch))
        for sentence, predicted in rows:
            log.info("fill-mask %s -> %s", sentence, predicted)


def unwrapped(state: State) -> torch.nn.Module:
    """The model's own module (``PerceiverMLM``) under Composer's model and DDP's wrapper; under FSDP2 its calls still
    gather the sharded parameters."""
    composer_model = state.model.module if isinstance(state.model, DistributedDataParallel) else state.model
    return composer_model.model


class LinearProbes(Callback):
    """After every evaluation, a linear probe of the encoder per labelled task (``perceiver_stream.probe``): the val
    accuracy of a logistic regression on the latents' mean and max, logged as ``metrics/probe/<task>/accuracy``
    beside the task's majority-class accuracy, so the run's curves show whether its encoder gets better for a task.

    Every rank encodes the same documents (under FSDP each forward is collective) and fits the same regression; the
    regression draws nothing from the global random state and the model returns to training mode, so a run with
    probes trains what it would without them."""

    def __init__(self, tasks: list[ProbeTask], *, batch_size: int, seed: int):
        self.tasks = tasks
        self.batch_size = batch_size
        self.seed = seed

    def eval_after_all(self, state: State, logger: Logger) -> None:
        module = unwrapped(state)
        was_training = module.training
        module.eval()

        def latents(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            with get_precision_context(state.precision):
                return module(state.device.tensor_to_device(input_ids),
                              state.device.tensor_to_device(attention_mask), latents_only=True)

        metrics = {}
        try:
            for task in self.tasks:
                start = time.perf_counter()
                accuracy = probe_accuracy(latents, task.train, task.val, len(task.labels),
                                          batch_size=self.batch_size, seed=self.seed)
                metrics[f"metrics/probe/{task.name}/accuracy"] = accuracy
                metrics[f"metrics/probe/{task.name}/majority"] = task.majority
                log.info("probe %s: val accuracy %.4f (majority class %.4f; %d training documents, %.1f s)",
                         task.name, accuracy, task.majority, len(task.train.labels), time.perf_counter() - start)
        finally:
            module.train(was_training)
        logger.log_metrics(metrics)

    def eval_standalone_end(self, state: State, logger: Logger) -> None:
        """``eval_first``'s evaluation (train.py runs it as ``Trainer.eval``): the initialisation's figures."""
        self.eval_after_all(state, logger)


def sample_digest(input_ids: torch.Tensor, labels: torch.Tensor) -> str:
    """A short hash of one sample's masked ids and labels: equal digests mean equal masks."""
    data = input_ids.cpu().numpy().tobytes() + labels.cpu().numpy().tobytes()
    return hashlib.blake2b(data, digest_size=8).hexdigest()


class SampleLog(Callback):
    """Appends, for every global batch, the global sample indices and a digest of each sample's masks
    (all ranks, in rank order) to a JSONL file. Sample identity then comes from the data itself, so a resumed
    or re-sharded run can be compared with a reference batch by batch."""

    def __init__(self, path: str):
        self.path = Path(path)

    def before_forward(self, state: State, logger: Logger) -> None:
        # Called per micro-batch; the first micro-batch of a batch marks its start.
        if int(state.timestamp.batch) == getattr(self, "_last_batch", None):
            return
        self._last_batch = int(state.timestamp.batch)
        self._rows: list[tuple[int, str]] = []

    def after_forward(self, state: State, logger: Logger) -> None:
        batch = state.batch
        self._rows += [(int(i), sample_digest(ids, labels)) for i, ids, labels in
                       zip(batch["sample_idx"], batch["input_ids"], batch["labels"], strict=True)]

    def batch_end(self, state: State, logger: Logger) -> None:
        gathered = dist.all_gather_object(self._rows)
        if dist.get_global_rank() == 0:
            rows = [row for rank_rows in gathered for row in rank_rows]
            record = {"batch": int(state.timestamp.batch), "epoch": int(state.timestamp.epoch),
                      "samples": [i for i, _ in rows], "digests": [d for _, d in rows],
                      "loss": state.total_loss_dict.get("loss/train/total")}  # the global batch's, all ranks
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


class ResumeGuard(Callback):
    """Stores in every checkpoint the settings that decide which samples and masks come next, and refuses to
    resume a checkpoint written with different ones: a changed global batch, seed or shuffle would otherwise
    continue as a silently different run. ``equivalents`` lists, for a setting, the recorded values that mean the
    current one (the tokenizer's earlier fingerprint)."""

    def __init__(self, settings: dict, equivalents: dict[str, tuple] | None = None):
        self.settings = settings
        self.equivalents = equivalents or {}

    def state_dict(self) -> dict:
        return {"settings": self.settings}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("settings", {})
        changed = [f"{key}={saved[key]!r} in the checkpoint but {self.settings.get(key)!r} now"
                   for key in sorted(saved)
                   if saved[key] != self.settings.get(key) and saved[key] not in self.equivalents.get(key, ())]
        if changed:
            raise ConfigError("cannot resume exactly: the checkpoint was written with other settings that decide the "
                             "order of samples and their masks: " + "; ".join(changed) +
                             ". Restore them, or start a new run (new run_name or save_folder)")


class CheckpointDigests(Callback):
    """After each checkpoint is written, records its digest beside it (``resume.write_digests``), so autoresume
    can refuse one whose bytes changed since. Composer's saver runs after the other callbacks of an event, so a
    new checkpoint (the saver's ``saved_checkpoints`` changed) is hashed at the start of the next batch, and the
    final one once the trainer closes; batches without a new checkpoint do not touch the folder.

    For a ``save_folder`` in object storage (``remote``), Composer writes each checkpoint to a temporary folder of
    its own, then uploads it: the digest is written there and uploaded beside the checkpoint."""

    def __init__(self, save_folder: Path, remote: str | None = None):
        self.save_folder = save_folder
        self.remote = remote
        self._saver: CheckpointSaver | None = None
        self._newest: str | None = None
        self._uploaded: set[str] = set()

    def fit_start(self, state: State, logger: Logger) -> None:
        self._saver = next((c for c in state.callbacks if isinstance(c, CheckpointSaver)), None)

    def batch_start(self, state: State, logger: Logger) -> None:
        newest = self._saver.saved_checkpoints[-1] if self._saver and self._saver.saved_checkpoints else None
        if newest != self._newest:
            self._newest = newest
            self._write()

    def post_close(self) -> None:
        self._write()

    def _write(self) -> None:
        if dist.get_global_rank() != 0:
            return
        if self.remote is None:
            write_digests(self.save_folder)
            return
        if self._saver is None or not self._saver.saved_checkpoints:
            return
        folder = Path(self._saver.saved_checkpoints[-1]).parent
        write_digests(folder)
        for digest in sorted(folder.glob("*.xxh64")):
            if digest.name not in self._uploaded:
                upload(digest, f"{self.remote.rstrip('/')}/{digest.name}")
                self._uploaded.add(digest.name)


class RunDescription(Callback):
    """Stores in every checkpoint the resolved run configuration, the tokenizer's fingerprint and files and a
    classifier's label names, so that a checkpoint can be exported (``perceiver-export``) or fine-tuned without the
    yaml, the overrides or the tokenizer it was trained with, on any machine (``perceiver_stream.checkpoint``)."""

    def __init__(self, config: dict, tokenizer_fingerprint: str, labels: list[str] | None = None,
                 tokenizer_files: dict[str, bytes] | None = None):
        self.config = config
        self.tokenizer_fingerprint = tokenizer_fingerprint
        self.labels = labels
        self.tokenizer_files = tokenizer_files

    def state_dict(self) -> dict:
        return {"config": self.config, "tokenizer_fingerprint": self.tokenizer_fingerprint, "labels": self.labels,
                "tokenizer_files": self.tokenizer_files}

    def load_state_dict(self, state: dict) -> None:
        """A resumed run describes itself by its own settings (the guard checks the ones that must match)."""


class FirstBatchTime(Callback):
    """Logs once how long this process's first training step took (forward, backward, optimizer), as
    ``time/first_batch_s``: with ``model.compile`` it holds the compilation, a one-off cost that would otherwise show
    only as a slow start of the throughput SpeedMonitor averages over its window."""

    def __init__(self) -> None:
        self._start: float | None = None
        self.seconds: float | None = None

    def batch_start(self, state: State, logger: Logger) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def batch_end(self, state: State, logger: Logger) -> None:
        if self.seconds is None and self._start is not None:
            self.seconds = time.perf_counter() - self._start
            logger.log_metrics({"time/first_batch_s": self.seconds})
            log.info("first batch: %.1f s (compilation and warm-up included)", self.seconds)


class CompileCache(Callback):
    """Carries torch.compile's cache in every checkpoint (``torch.compiler.save_cache_artifacts``: the compiled
    graphs of ``model.compile``'s layers and of the fused Lamb, with their generated kernels), and hands it to
    torch when a run resumes from one: the resumed process, on this machine or any other with the same torch,
    finds its graphs compiled instead of compiling them again (inductor's cache directory serves only the machine
    that wrote it). After the first batch it logs how many graphs came from a cache (``compile/cache_hits``) and
    how many were compiled (``compile/cache_misses``). A checkpoint of another torch version is not handed over."""

    def __init__(self) -> None:
        self._logged = False

    def state_dict(self) -> dict:
        saved = torch.compiler.save_cache_artifacts()
        nothing = saved is None or not any(vars(saved[1]).values())  # nothing compiled in this process
        return {"torch": torch.__version__, "artifacts": None if nothing else saved[0]}

    def load_state_dict(self, state: dict) -> None:
        artifacts = state.get("artifacts")
        if artifacts is None:
            return
        if state.get("torch") != torch.__version__:
            log.info("compile cache: the checkpoint's is torch %s's, this is %s: compiling afresh",
                     state.get("torch"), torch.__version__)
            return
        info = torch.compiler.load_cache_artifacts(artifacts)
        graphs = 0 if info is None else len(info.inductor_artifacts)
        log.info("compile cache: %d compiled graph(s) from the checkpoint (%.1f MB)", graphs, len(artifacts) / 1e6)

    def batch_end(self, state: State, logger: Logger) -> None:
        if self._logged:
            return
        self._logged = True
        from torch._dynamo.utils import counters

        hits, misses = counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"]
        if hits or misses:
            logger.log_metrics({"compile/cache_hits": hits, "compile/cache_misses": misses})
            log.info("compilation: %d graph(s) from a cache, %d compiled", hits, misses)


class NonFiniteLossError(RuntimeError):
    """Training stopped at a non-finite loss, before the optimizer step and any checkpoint of it."""


class StopOnNonFiniteLoss(Callback):
    """Stops the run at the first NaN or infinite loss, on every rank at once, before backward: the weights that
    produced it are never updated from it and never saved, so ``latest`` stays the last finite checkpoint."""

    def after_loss(self, state: State, logger: Logger) -> None:
        loss = state.loss
        total = sum(loss.values()) if isinstance(loss, dict) else loss
        finite = torch.isfinite(total.detach()).all().to(torch.float32).reshape(1)
        dist.all_reduce(finite, reduce_operation="MIN")  # a rank alone must not leave the others waiting
        if finite.item() == 0:
            raise NonFiniteLossError(
                f"the loss is {total.item()} at batch {state.timestamp.batch.value + 1} (on this rank): stopped "
                "before the optimizer step, so no checkpoint holds it; the newest checkpoint is from an earlier "
                "batch. Lower optimizer.lr, add grad_clip_norm, or check that batch's samples (callbacks.sample_log)")


class LeaseWatch(Callback):
    """Stops the run, before its next checkpoint, when its lease was taken (its renewals stalled past the lease and
    another run took the folder): two writers must not share one folder."""

    def __init__(self, lease: Lease):
        self.lease = lease

    def batch_end(self, state: State, logger: Logger) -> None:
        if self.lease.lost is not None:
            raise SaveFolderInUse(f"{self.lease.lost}; stopped so that the two runs do not write one folder")
