"""A rank of a two-rank run (``tests.train.forked``, entry ``tests.train.fsdp_exactness_worker:main``): mlm_tiny's
model in float64, FSDP2-sharded as Composer shards it (each attention layer, then the root), trained 6 steps with
our Lamb on half of a batch per rank, vs one process on the whole batch. Rank 0 writes to argv[0] the largest
relative differences of the gradients and of the per-step losses.

float64, so a structural error (an unsynchronised or doubly-counted gradient, a wrong trust ratio) cannot hide in
the float32 reduction-order noise that Lamb's per-element normalisation amplifies (tests/train/test_equivalence.py).
"""

from __future__ import annotations

import json

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.fsdp import fully_shard

from perceiver_stream.config import build, load
from perceiver_stream.model import PerceiverMLM
from perceiver_stream.model.mlm import IGNORE_INDEX, is_attention_layer
from perceiver_stream.optim import Lamb
from perceiver_stream.train.config import TrainConfig
from tests.train.conftest import TINY

STEPS = 6


def make_model() -> PerceiverMLM:
    cfg = build(TrainConfig, load(TINY, ["data.tokenizer=unused"]))
    torch.manual_seed(0)
    return PerceiverMLM(cfg.model).double()


def train(model: PerceiverMLM, rows: slice, scale: float, ids: torch.Tensor, labels: torch.Tensor) -> tuple:
    """Losses of ``STEPS`` Lamb steps, and the first step's gradients (full tensors)."""
    optimizer = Lamb(model.parameters(), lr=0.02, weight_decay=0.01)
    labelled = int((labels != IGNORE_INDEX).sum())
    losses, grads = [], None
    for _ in range(STEPS):
        out = model(ids[rows], labels=labels[rows])
        loss = F.cross_entropy(out.logits, out.targets, reduction="sum") / labelled  # global-token mean
        (loss * scale).backward()
        if grads is None:
            grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
                     for n, p in model.named_parameters()}
        optimizer.step()
        optimizer.zero_grad()
        total = loss.detach().clone()
        if scale > 1:
            dist.all_reduce(total)
        losses.append(total.item())
    return losses, grads


def main(argv: list[str]) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(10, 32000, (4 * world, 128), generator=generator)
    labels = torch.where(torch.rand(ids.shape, generator=generator) < 0.15, ids, IGNORE_INDEX)
    reference_losses, reference_grads = train(make_model(), slice(None), 1.0, ids, labels)
    model = make_model()
    for module in model.modules():
        if is_attention_layer(module):
            fully_shard(module)
    fully_shard(model)
    # FSDP averages gradients over ranks: each rank's loss is its tokens' share of the global mean, times world
    losses, grads = train(model, slice(rank * 4, (rank + 1) * 4), float(world), ids, labels)
    scale = max(g.abs().max().item() for g in reference_grads.values())
    report = {
        "grad": max((grads[n] - g).abs().max().item() for n, g in reference_grads.items()) / scale,
        "loss": max(abs(a - b) / a for a, b in zip(reference_losses, losses, strict=True)),
        "loss_drop": reference_losses[0] - reference_losses[-1],
    }
    if rank == 0:
        with open(argv[0], "w") as f:
            json.dump(report, f)
    dist.barrier()  # once, rank 0 tore gloo down while rank 1 was still in a collective: SIGABRT at exit
    dist.destroy_process_group()
