"""Linear probes: how much of a labelled task a frozen encoder's latents hold, as the val accuracy of a logistic
regression on their mean and max over the latents.

Masked-token accuracy says a pretraining run is learning to fill masks; it does not say the encoder is getting better
for a task. A probe on a few thousand labelled documents takes seconds, so a run can measure it at every evaluation
(``callbacks.probes``, logged as ``metrics/probe/<task>/accuracy``) and show the downstream curve of the whole
pretraining, the first evaluation (``eval_first``) giving the initialisation's figure to beat.
``experiments/downstream.py`` and ``experiments/encoder_stages.py`` fit the same regression.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from streaming import LocalDataset

from perceiver_stream.config import ConfigError
from perceiver_stream.data.classification import ClassificationCollator
from perceiver_stream.data.dataset import DataError, check_manifest, load_manifest, verify_shards
from perceiver_stream.data.format import IDS_COLUMN, LABEL_COLUMN, MANIFEST, TYPES_COLUMN

L2_CHOICES = (0.03, 0.1, 0.3, 1.0, 3.0)  # the regression's C, chosen on a fifth of the training rows


def logistic_regression(train_x: torch.Tensor, train_y: np.ndarray, val_x: torch.Tensor, val_y: np.ndarray,
                        classes: int, seed: int) -> dict:
    """Multinomial logistic regression (L-BFGS on the convex objective ``C * sum(cross-entropy) + |W|^2 / 2``) of
    features ``train_x`` (dense or sparse rows), ``C`` chosen on a fifth of the training rows, then refitted on all;
    val accuracy. Deterministic, and draws nothing from torch's global random state (a training run's stays
    untouched)."""

    def fit(x: torch.Tensor, y: torch.Tensor, c: float) -> tuple[torch.Tensor, torch.Tensor]:
        weight = torch.zeros(x.shape[1], classes, requires_grad=True)
        bias = torch.zeros(classes, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], max_iter=500, line_search_fn="strong_wolfe")

        def objective():
            optimizer.zero_grad()
            loss = c * F.cross_entropy(x @ weight + bias, y, reduction="sum") + 0.5 * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(objective)
        return weight.detach(), bias.detach()

    def accuracy(x, y, weight, bias) -> float:
        return float(((x @ weight + bias).argmax(-1) == y).float().mean())

    def rows(x: torch.Tensor, index: np.ndarray) -> torch.Tensor:
        return torch.index_select(x, 0, torch.from_numpy(index)).coalesce() if x.is_sparse else x[index]

    order = np.random.default_rng(seed).permutation(len(train_y))
    fit_rows, check_rows = order[: len(order) * 4 // 5], order[len(order) * 4 // 5:]
    y = torch.from_numpy(train_y).long()
    with torch.enable_grad():
        choices = {c: accuracy(rows(train_x, check_rows), y[check_rows], *fit(rows(train_x, fit_rows), y[fit_rows], c))
                   for c in L2_CHOICES}
        best = max(choices, key=choices.get)
        final = fit(train_x, y, best)
    return {"accuracy": accuracy(val_x, torch.from_numpy(val_y).long(), *final), "C": best, "holdout": choices}


def standardised(train: torch.Tensor, val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense features scaled by the training split's mean and spread (so one ``C`` grid suits any encoder)."""
    if train.is_sparse:
        return train, val
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    return (train - mean) / std, (val - mean) / std


def mean_and_max(values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 2C): the mean and the max of ``values`` (B, N, C) over the positions where ``mask`` (B, N) is true (all
    when None)."""
    if mask is None:
        return torch.cat([values.mean(1), values.amax(1)], dim=-1)
    weights = mask.unsqueeze(-1).to(values.dtype)
    mean = (values * weights).sum(1) / weights.sum(1)
    maximum = values.masked_fill(~mask.unsqueeze(-1), -torch.inf).amax(1)
    return torch.cat([mean, maximum], dim=-1)


@dataclass
class LabelledSamples:
    """Labelled documents as arrays: padded ids and token types (S, L), label indices (S,)."""

    ids: np.ndarray
    types: np.ndarray
    labels: np.ndarray

    def batch(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The classification collator's batch of ``rows`` (cut after the longest document)."""
        return ClassificationCollator()([{"input_ids": self.ids[i], "token_type": self.types[i],
                                          "label": self.labels[i], "sample_idx": int(i)} for i in rows])

    def subset(self, count: int, seed: int) -> LabelledSamples:
        """At most ``count`` samples drawn without replacement (in their stored order), the same for a seed."""
        if count >= len(self.labels):
            return self
        rows = np.sort(np.random.default_rng(seed).choice(len(self.labels), count, replace=False))
        return LabelledSamples(self.ids[rows], self.types[rows], self.labels[rows])


@torch.no_grad()
def latent_features(latents: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], samples: LabelledSamples,
                    batch_size: int) -> torch.Tensor:
    """(S, 2D) float32 rows: the mean and max over the latents ``latents(input_ids, attention_mask)`` returns for
    each document (padding is masked out of the encoder's attention, so a document's row does not depend on the
    others in its batch)."""
    rows = []
    for start in range(0, len(samples.labels), batch_size):
        batch = samples.batch(np.arange(start, min(start + batch_size, len(samples.labels))))
        rows.append(mean_and_max(latents(batch["input_ids"], batch["attention_mask"]).float().cpu()))
    return torch.cat(rows)


def probe_accuracy(latents: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], train: LabelledSamples,
                   val: LabelledSamples, classes: int, *, batch_size: int, seed: int) -> float:
    """Val accuracy of a logistic regression on the standardised latent features of ``train``."""
    x_train, x_val = standardised(latent_features(latents, train, batch_size),
                                  latent_features(latents, val, batch_size))
    return logistic_regression(x_train, train.labels, x_val, val.labels, classes, seed)["accuracy"]


@dataclass
class ProbeTask:
    """A probe's labelled shards in memory: the training split (at most the configured sample count), the val split
    and the label names."""

    name: str
    train: LabelledSamples
    val: LabelledSamples
    labels: list[str]

    @property
    def majority(self) -> float:
        """The val accuracy of always answering the most frequent val label: the floor a probe must clear."""
        return float(np.bincount(self.val.labels, minlength=len(self.labels)).max() / len(self.val.labels))


def read_labelled(directory: Path, what: str) -> LabelledSamples:
    """Every sample of one split ``perceiver-convert labelled`` wrote to ``directory``, in stored order, its shards
    verified first (which also writes the decompressed ``.mds`` that ``LocalDataset`` reads); a ``DataError`` naming
    ``what`` when a shard does not match its hash or the split holds no samples."""
    verify_shards(what, directory)
    dataset = LocalDataset(str(directory))
    records = [dataset[i] for i in range(len(dataset))]
    if not records:
        raise DataError(f"{what}: {directory} has no samples; reconvert with a larger --val-fraction")
    return LabelledSamples(np.stack([r[IDS_COLUMN] for r in records]).astype(np.int64),
                           np.stack([r[TYPES_COLUMN] for r in records]),
                           np.array([int(r[LABEL_COLUMN]) for r in records]))


def read_probe_task(name: str, path: str, *, tokenizer: str, tokenizer_fingerprints: tuple[str, ...], vocab_size: int,
                    max_seq_len: int, train_samples: int, seed: int) -> ProbeTask:
    """``callbacks.probes.<name>``: the labelled shards ``perceiver-convert labelled`` (or ``rotten-tomatoes``,
    ``bbc-news``) wrote to ``path`` (its ``train`` and ``val``, on local disk), checked against the run's tokenizer
    and sequence length as the streams are, verified and read; every mismatch is a ``ConfigError`` naming the key."""
    key = f"callbacks.probes.{name}={path}"
    splits, labels = {}, None
    for split in ("train", "val"):
        directory = Path(path) / split
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            raise ConfigError(f"{key}: no {manifest_path}; convert labelled text with perceiver-convert labelled (or "
                              "rotten-tomatoes, bbc-news) and point the key at its output directory (on local disk)")
        try:
            manifest = load_manifest(manifest_path, key)
            if not manifest.get("labels"):
                raise ConfigError(f"{key}: {directory} holds no labels; a probe needs labelled shards (perceiver-"
                                  "convert labelled, rotten-tomatoes or bbc-news)")
            check_manifest(key, manifest, tokenizer=tokenizer, tokenizer_fingerprints=tokenizer_fingerprints,
                           vocab_size=vocab_size, max_seq_len=max_seq_len)
            if labels is not None and manifest["labels"] != labels:
                raise ConfigError(f"{key}: train and val have different labels ({labels} and {manifest['labels']})")
            labels = manifest["labels"]
            splits[split] = read_labelled(directory, key)
        except DataError as e:
            raise ConfigError(str(e)) from None
    return ProbeTask(name, splits["train"].subset(train_samples, seed), splits["val"], labels)
