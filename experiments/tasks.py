"""The two labelled tasks, converted as ``perceiver-convert rotten-tomatoes`` / ``bbc-news`` do (seq 128, 20% val by
stable hash; the registry corpora fetched once per machine), and the floor without a network: a bag of pieces."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from perceiver_stream.convert.cli import DOWNLOADS
from perceiver_stream.convert.labelled import (
    LabelledStats,
    convert_labelled,
    read_label_directories,
    read_rotten_tomatoes,
)
from perceiver_stream.convert.registry_corpora import fetch_bbc_news, fetch_rotten_tomatoes
from perceiver_stream.data.format import is_word_token
from perceiver_stream.probe import LabelledSamples, logistic_regression, read_labelled

TASKS = {"rt": "rotten-tomatoes", "bbc": "bbc-news"}


@dataclass
class Split(LabelledSamples):
    """One split of a task, named so that a cache of encoder outputs tells a train row from a val row of the same
    index."""

    name: str = ""

    def batch(self, rows: np.ndarray) -> dict:
        """The classification collator's batch of ``rows`` (cut after the longest document), and the split's name."""
        return {**super().batch(rows), "split": self.name}


@dataclass
class Task:
    """A task's labelled shards (``directory``: its ``train`` and ``val``, what a classifier's stream points at),
    read back as arrays, and its label names."""

    directory: Path
    train: Split
    val: Split
    labels: list[str]

    @property
    def majority(self) -> float:
        return float(np.bincount(self.val.labels).max() / len(self.val.labels))


def labelled_task(task: str, cache: Path, tokenizer: str, seq_len: int) -> Task:
    """The task converted as ``perceiver-convert`` does (cached), read back as arrays."""
    out = cache / f"{task}-{seq_len}"
    if not out.exists():
        stats = LabelledStats()
        documents = (read_rotten_tomatoes(fetch_rotten_tomatoes(DOWNLOADS), stats) if task == "rt"
                     else read_label_directories(fetch_bbc_news(DOWNLOADS), stats))
        convert_labelled(documents, out, tokenizer=tokenizer, max_seq_len=seq_len, val_fraction=0.2,
                         source={"task": TASKS[task]}, stats=stats)
    train, val = (Split(**vars(read_labelled(out / split, task)), name=split) for split in ("train", "val"))
    labels = json.loads((out / "train" / "manifest.json").read_text())["labels"]
    return Task(out, train, val, labels)


def sparse_bag(pieces: list[np.ndarray], vocab_size: int) -> torch.Tensor:
    """Rows (len(pieces), vocab_size) with a 1 at each of a row's (distinct) pieces."""
    entries = [(row, piece) for row, held in enumerate(pieces) for piece in held]
    index = torch.tensor(entries, dtype=torch.long).T if entries else torch.zeros(2, 0, dtype=torch.long)
    return torch.sparse_coo_tensor(index, torch.ones(index.shape[1]), (len(pieces), vocab_size)).coalesce()


def bag_of_pieces(task: Task, vocab_size: int, seed: int) -> dict:
    """The floor without a network: logistic regression on which pieces a document holds."""

    def features(split: Split) -> torch.Tensor:
        return sparse_bag([np.unique(ids[is_word_token(types)]) for ids, types in zip(split.ids, split.types,
                                                                                        strict=True)], vocab_size)

    return logistic_regression(features(task.train), task.train.labels, features(task.val), task.val.labels,
                               len(task.labels), seed)
