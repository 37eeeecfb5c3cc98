"""Accuracy where the answer is not in the input: positions whose token was replaced by ``<mask>``.

Composer's ``MaskedAccuracy`` counts every labelled position, including the 10% of selected words that masking
leaves unchanged; a model that copies its input scores there without having learned anything. These metrics
count ``<mask>`` positions only, and report beside the model the accuracy of always guessing the most frequent
target of those same positions: the accuracy of the unigram plateau, an upper bound of any constant guess.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from perceiver_stream.model.mlm import IGNORE_INDEX


def mask_token_positions(input_ids: torch.Tensor, labels: torch.Tensor, mask_token_id: int) -> torch.Tensor:
    """Which labelled positions (in row-major order, as ``MLMOutput`` holds them) had ``<mask>`` as input."""
    return input_ids[labels != IGNORE_INDEX] == mask_token_id


class MaskTokenAccuracy(Metric):
    """Top-1 accuracy at positions whose input token was ``<mask>``."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, targets: torch.Tensor, is_mask: torch.Tensor) -> None:
        """``logits`` (M, V) and ``targets`` (M,) of the labelled positions; ``is_mask`` (M,) where the input
        was ``<mask>``."""
        self.correct += (logits.argmax(-1)[is_mask] == targets[is_mask]).sum()
        self.total += is_mask.sum()

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total.clamp(min=1)


class MaskTokenUnigramAccuracy(Metric):
    """Accuracy of always guessing the most frequent target among the ``<mask>`` positions seen."""

    full_state_update = False

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.add_state("counts", default=torch.zeros(vocab_size, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, targets: torch.Tensor, is_mask: torch.Tensor) -> None:
        self.counts += torch.bincount(targets[is_mask], minlength=len(self.counts))

    def compute(self) -> torch.Tensor:
        return self.counts.max().float() / self.counts.sum().clamp(min=1)
