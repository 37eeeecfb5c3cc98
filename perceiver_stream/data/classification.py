"""Batches of labelled samples for fine-tuning a classifier."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from perceiver_stream.data.format import PADDING


class ClassificationCollator:
    """Collates ``{input_ids, token_type, label, sample_idx}`` records into ``input_ids``, ``attention_mask`` (1 at
    real tokens), ``labels`` (class indices) and ``sample_idx``.

    Labelled samples are one document each, padded at the end, so the batch is cut after its longest document: the
    padding it drops is masked out of every attention anyway (the outputs are the same), and short texts (a
    review snippet of ~35 tokens in a 512-token sample) then cost what they hold.
    """

    def __call__(self, records: Sequence[dict]) -> dict[str, torch.Tensor]:
        input_ids = np.stack([r["input_ids"] for r in records]).astype(np.int64)
        real = np.stack([r["token_type"] for r in records]) != PADDING
        length = max(int(real.sum(axis=1).max()), 1)
        return {
            "input_ids": torch.from_numpy(np.ascontiguousarray(input_ids[:, :length])),
            "attention_mask": torch.from_numpy(real[:, :length].astype(np.int64)),
            "labels": torch.tensor([int(r["label"]) for r in records], dtype=torch.long),
            "sample_idx": torch.tensor([int(r["sample_idx"]) for r in records], dtype=torch.long),
        }


def count_samples(batch: dict[str, torch.Tensor]) -> dict[str, int]:
    """Tokens of a classification batch for Composer's ``DataSpec`` (its loss is a mean over samples)."""
    return {"total": int(batch["attention_mask"].sum())}
