"""The Composer contract around ``PerceiverClassifier``: loss, accuracy, FLOPs, FSDP/checkpointing hooks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from composer.metrics import CrossEntropy
from composer.models import ComposerModel
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from perceiver_stream.model.classifier import PerceiverClassifier
from perceiver_stream.model.flops import classifier_training_flops
from perceiver_stream.model.mlm import checkpoint_layers, compile_layers, is_attention_layer

Batch = Mapping[str, torch.Tensor]


class ComposerPerceiverClassifier(ComposerModel):
    """A ``PerceiverClassifier`` for Composer's Trainer.

    A batch holds ``input_ids`` (B, L), ``attention_mask`` (B, L; 1 at real tokens) and ``labels`` (B,) class
    indices (``perceiver_stream.data.classification``). The loss is the mean cross-entropy over the batch's samples;
    metrics: ``MulticlassAccuracy`` (micro: the fraction of samples classified right) in training and eval,
    ``CrossEntropy`` in eval.

    Args:
        model: the classifier, initialised (and frozen) as it should start.
        wrap_activation_checkpointing: apply ``config.activation_checkpointing`` here; False when Composer's FSDP
            applies it (as for the MLM).
    """

    def __init__(self, model: PerceiverClassifier, *, wrap_activation_checkpointing: bool = True):
        super().__init__()
        self.config = model.config
        self.model = model
        self.model.fsdp_wrap_fn = is_attention_layer
        self.model.activation_checkpointing_fn = is_attention_layer
        if model.config.compile:  # before checkpointing wraps the layers, as for the MLM
            compile_layers(self.model, backend=model.config.compile_backend)
        if wrap_activation_checkpointing and model.config.activation_checkpointing:
            checkpoint_layers(self.model, offload=model.config.activation_offloading)
        classes = model.config.num_classes
        self.train_metrics = {"MulticlassAccuracy": MulticlassAccuracy(classes, average="micro")}
        self.eval_metrics = {"MulticlassAccuracy": MulticlassAccuracy(classes, average="micro"),
                             "CrossEntropy": CrossEntropy()}

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.model(batch["input_ids"], batch.get("attention_mask"))

    def loss(self, outputs: torch.Tensor, batch: Batch, *args: Any, **kwargs: Any) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), batch["labels"])

    def eval_forward(self, batch: Batch, outputs: torch.Tensor | None = None) -> torch.Tensor:
        return outputs if outputs is not None else self.forward(batch)

    def update_metric(self, batch: Batch, outputs: torch.Tensor, metric: Metric) -> None:
        metric.update(outputs.float(), batch["labels"])

    def get_metrics(self, is_train: bool = False) -> dict[str, Metric]:
        return self.train_metrics if is_train else self.eval_metrics

    def flops_per_batch(self, batch: Batch) -> int:
        batch_size, seq_len = batch["input_ids"].shape
        frozen = not any(p.requires_grad for p in self.model.encoder.parameters())
        return classifier_training_flops(self.config, batch_size, seq_len, frozen_encoder=frozen)
