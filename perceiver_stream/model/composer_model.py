"""The Composer contract around ``PerceiverMLM``: loss, metrics, FLOPs, FSDP/checkpointing hooks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from composer.metrics.nlp import LanguageCrossEntropy, MaskedAccuracy
from composer.models import ComposerModel
from torchmetrics import Metric

from perceiver_stream.model.config import PerceiverMLMConfig
from perceiver_stream.model.flops import training_flops
from perceiver_stream.model.metrics import MaskTokenAccuracy, MaskTokenUnigramAccuracy, mask_token_positions
from perceiver_stream.model.mlm import (
    IGNORE_INDEX,
    MLMOutput,
    PerceiverMLM,
    checkpoint_layers,
    compile_layers,
    is_attention_layer,
)

Batch = Mapping[str, torch.Tensor]


class ComposerPerceiverMLM(ComposerModel):
    """Perceiver IO MLM for Composer's Trainer.

    A batch holds ``input_ids`` (B, L), ``attention_mask`` (B, L; 1 at real tokens) and ``labels`` (B, L;
    ``IGNORE_INDEX`` where no loss). The loss is the mean cross-entropy over labelled tokens, computed from logits of
    the labelled positions only. Metrics: ``MaskedAccuracy`` and ``LanguageCrossEntropy`` over labelled
    positions (in training only the first: the second is the loss), and in eval ``MaskTokenAccuracy`` /
    ``MaskTokenUnigramAccuracy`` over ``<mask>`` positions only (``perceiver_stream.model.metrics``).

    Args:
        config: the model configuration.
        mask_token_id: the tokenizer's ``<mask>`` id.
        wrap_activation_checkpointing: apply ``config.activation_checkpointing`` / ``activation_offloading``
            here. Leave it False when Composer's FSDP applies them instead (its ``activation_checkpointing``
            flags are set from the same config), so the flag means one thing.
    """

    def __init__(self, config: PerceiverMLMConfig, *, mask_token_id: int, wrap_activation_checkpointing: bool = True):
        super().__init__()
        self.config = config
        self.mask_token_id = mask_token_id
        self.model = PerceiverMLM(config)
        # Composer's FSDP looks for these on each child of the ComposerModel, i.e. on self.model.
        self.model.fsdp_wrap_fn = is_attention_layer
        self.model.activation_checkpointing_fn = is_attention_layer
        if config.compile:  # before checkpointing wraps the layers: the wrappers then call compiled layers
            compile_layers(self.model, backend=config.compile_backend)
        if wrap_activation_checkpointing and config.activation_checkpointing:
            checkpoint_layers(self.model, offload=config.activation_offloading)
        # The <mask>-only metrics are evaluated, not tracked every training batch: they cost an argmax over the
        # logits each, and held-out text is where learning is measured. The training cross-entropy is the loss
        # (loss/train/total): as a metric too it cost a second softmax over the vocabulary every step.
        self.train_metrics = {"MaskedAccuracy": MaskedAccuracy()}
        self.eval_metrics = {"MaskedAccuracy": MaskedAccuracy(), "LanguageCrossEntropy": LanguageCrossEntropy(),
                             "MaskTokenAccuracy": MaskTokenAccuracy(),
                             "MaskTokenUnigramAccuracy": MaskTokenUnigramAccuracy(config.vocab_size)}

    def forward(self, batch: Batch) -> MLMOutput:
        return self.model(batch["input_ids"], batch.get("attention_mask"), labels=batch["labels"])

    def loss(self, outputs: MLMOutput, batch: Batch, *args: Any, **kwargs: Any) -> torch.Tensor:
        return F.cross_entropy(outputs.logits.float(), outputs.targets)

    def eval_forward(self, batch: Batch, outputs: MLMOutput | None = None) -> MLMOutput:
        return outputs if outputs is not None else self.forward(batch)

    def update_metric(self, batch: Batch, outputs: MLMOutput, metric: Metric) -> None:
        if isinstance(metric, MaskTokenAccuracy | MaskTokenUnigramAccuracy):
            is_mask = mask_token_positions(batch["input_ids"], batch["labels"], self.mask_token_id)
            metric.update(outputs.logits, outputs.targets, is_mask)
        else:
            metric.update(outputs.logits, outputs.targets)

    def get_metrics(self, is_train: bool = False) -> dict[str, Metric]:
        return self.train_metrics if is_train else self.eval_metrics

    def flops_per_batch(self, batch: Batch) -> int:
        """Training FLOPs of ``batch`` as the step runs them (formula in ``training_flops``), for MFU."""
        counts = (batch["labels"] != IGNORE_INDEX).sum(dim=1)
        batch_size, seq_len = batch["labels"].shape
        return training_flops(self.config, batch_size, seq_len, int(counts.sum()), int(counts.max()) * batch_size)
