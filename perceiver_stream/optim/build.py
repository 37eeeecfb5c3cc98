"""The ``optimizer:`` section of the yaml: which optimizer, its hyperparameters, the weight-decay split."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from perceiver_stream.optim.lamb import Lamb

# Parameters that are learned inputs rather than weights (see param_groups).
NO_DECAY_PATTERNS = ("position_embedding", "latents", "output_queries")


@dataclass
class OptimizerConfig:
    """The ``optimizer:`` section.

    Attributes:
        name: ``lamb`` (the blueprint's) or ``adamw`` (for comparison).
        lr, betas, eps, weight_decay: the usual; blueprint: lr 0.00125, weight decay 0.01.
        clamp_value, adam, debias: Lamb only (see ``Lamb``).
        no_weight_decay: regular expressions; a parameter whose name matches one gets no weight decay.
            Parameters with fewer than 2 dimensions (biases, LayerNorm) never get any.
        adam_params: Lamb only: regular expressions; a parameter whose name matches one takes Adam's per-element
            update (trust ratio 1) at ``adam_lr`` instead of Lamb's layer-wise one (docs/design.md: the token
            embedding, whose rows are each a few tokens' alone, barely moves under one trust ratio for the whole
            matrix).
        adam_lr: the learning rate of ``adam_params`` (None: ``lr``).
        fused: Lamb only: the update as two compiled passes per parameter (``perceiver_stream.optim.fused``;
            the ``_foreach`` update where ``torch.compile`` does not work on the device). None: on GPUs, where a
            run repays the compilation; off on CPUs (~15-20 s a process, more than a test run). Not a blueprint
            key.
    """

    name: str = "lamb"
    lr: float = 0.00125
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-6
    weight_decay: float = 0.01
    clamp_value: float = 10.0
    adam: bool = False
    debias: bool = False
    no_weight_decay: list[str] = field(default_factory=lambda: list(NO_DECAY_PATTERNS))
    adam_params: list[str] = field(default_factory=list)
    adam_lr: float | None = None
    fused: bool | None = None

    def __post_init__(self) -> None:
        if self.name not in ("lamb", "adamw"):
            raise ValueError(f"optimizer.name={self.name!r}: expected 'lamb' or 'adamw'")
        checks = {"lr": self.lr > 0, "eps": self.eps >= 0, "weight_decay": self.weight_decay >= 0,
                  "clamp_value": self.clamp_value >= 0}
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"optimizer.{key}={getattr(self, key)}: must be "
                                 f"{'positive' if key == 'lr' else 'at least 0'}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optimizer.betas={self.betas}: expected two values in [0, 1)")
        if self.adam_lr is not None and self.adam_lr <= 0:
            raise ValueError(f"optimizer.adam_lr={self.adam_lr}: must be positive")
        if self.adam_params and self.name != "lamb":
            raise ValueError(f"optimizer.adam_params applies to Lamb; optimizer.name={self.name!r} updates every "
                             "parameter the same way")


def param_groups(model: nn.Module, weight_decay: float, no_weight_decay: list[str]) -> list[dict]:
    """Two groups: decayed weight matrices, and everything else with weight decay 0.

    Following BERT and the Lamb paper, biases and LayerNorm gains/shifts (every parameter of fewer than
    2 dimensions) are not decayed: shrinking them changes what a layer computes, not its capacity. By
    default the learned position embedding, latents and output queries are not decayed either: they are
    the model's learned inputs (each row is a position or a latent slot, all used at every step), and
    decaying them pulls inputs towards zero rather than regularising a mapping. The token embedding is
    decayed: tied to the output head, it is the classifier's weight matrix.
    """
    patterns = [re.compile(p) for p in no_weight_decay]
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or any(p.search(name) for p in patterns):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adam_groups(model: nn.Module, groups: list[dict], patterns: list[str], lr: float) -> list[dict]:
    """``groups`` with the parameters whose names match ``patterns`` moved into groups of their own that take
    Adam's update at ``lr`` (their weight decay kept); empty groups dropped."""
    matching = [re.compile(p) for p in patterns]
    adam = {id(param) for name, param in model.named_parameters() if any(p.search(name) for p in matching)}
    split = []
    for group in groups:
        rest = [param for param in group["params"] if id(param) not in adam]
        moved = [param for param in group["params"] if id(param) in adam]
        split.append({**group, "params": rest})
        if moved:
            split.append({**group, "params": moved, "adam": True, "lr": lr})
    return [group for group in split if group["params"]]


def build_optimizer(model: nn.Module, cfg: OptimizerConfig,
                    process_group: dist.ProcessGroup | str | None = None) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.no_weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    if cfg.adam_params:
        groups = adam_groups(model, groups, cfg.adam_params, cfg.lr if cfg.adam_lr is None else cfg.adam_lr)
    return Lamb(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, clamp_value=cfg.clamp_value, adam=cfg.adam,
                debias=cfg.debias, process_group=process_group, fused=cfg.fused)
