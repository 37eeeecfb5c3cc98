"""A rank of a two-rank run (``tests.train.forked``, entry ``tests.optim.fsdp_worker:main``): optimizers on an
FSDP2-sharded toy MLP (fully_shard per Linear, lr 0.01, 3 steps) vs a single-process run with the same global
batch. Rank 0 writes the max |difference| of the full parameters for each to argv[0].

float64, so the reduction-order noise of data parallelism (~1e-15) cannot hide a structural error.
``torch_optimizer_local_shards`` is ``torch_optimizer.Lamb`` given the rank-local shards as plain tensors,
which is what FSDP1 with ``use_orig_params`` hands an optimizer; ``torch_optimizer_dtensor`` gets the
DTensors, whose ``torch.norm`` all-reduces (two blocking collectives per parameter per step).
``ours_flat_shards`` is our Lamb with ``process_group="world"`` on FSDP1's layout, written out by hand (torch's
FSDP1 needs CUDA in Composer): each rank holds a contiguous slice of every flattened parameter, uneven, and for
some parameters an empty one without a gradient, as FSDP1 leaves it. ``*_fused``: the same with our Lamb's
compiled two-pass update (for shards of ``fused_kernels.MIN_ELEMENTS`` or more), against the single-process run of the
``_foreach`` update.
"""

from __future__ import annotations

import json

import torch
import torch.distributed as dist
import torch_optimizer
from torch import nn
from torch.distributed.fsdp import fully_shard

from perceiver_stream.optim import Lamb
from perceiver_stream.optim import fused as fused_kernels

STEPS, LR = 3, 0.01
# The toy's tensors are small: lowered so that the fused runs take the compiled path for the larger local
# shards and the _foreach path for the others, both in one step.
fused_kernels.MIN_ELEMENTS = 1000


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 4))
    return model.double()


class LocalShards(torch.optim.Optimizer):
    """``torch_optimizer.Lamb`` over each rank's plain local shards (the FSDP1 ``use_orig_params`` view)."""

    def __init__(self, params):
        self.params = list(params)
        self.shards = [p.to_local().detach() for p in self.params]
        self.inner = torch_optimizer.Lamb(self.shards, lr=LR, weight_decay=0.01)

    def step(self, closure=None):
        for p, shard in zip(self.params, self.shards, strict=True):
            shard.grad = p.grad.to_local()
        self.inner.step()

    def zero_grad(self, set_to_none: bool = True):
        for p in self.params:
            p.grad = None


def make_optimizer(name: str, params) -> torch.optim.Optimizer:
    if name in ("ours", "ours_fused"):
        return Lamb(params, lr=LR, weight_decay=0.01, fused=name == "ours_fused")
    if name == "torch_optimizer_dtensor":
        return torch_optimizer.Lamb(params, lr=LR, weight_decay=0.01)
    if name == "torch_optimizer_local_shards":
        return LocalShards(params)
    return torch.optim.AdamW(params, lr=LR, weight_decay=0.01)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    for step in range(STEPS):
        loss = nn.functional.mse_loss(model(inputs[step]), targets[step])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def flat_bounds(numel: int, index: int, world: int, rank: int) -> tuple[int, int]:
    """Rank ``rank``'s slice of a flattened parameter: uneven cuts; every third parameter lives on rank 0 only."""
    if index % 3 == 2:
        return (0, numel) if rank == 0 else (numel, numel)
    cuts = [0, *[(numel * (2 * r + 1)) // (2 * world) for r in range(1, world)], numel]
    return cuts[rank], cuts[rank + 1]


def train_flat_shards(inputs: torch.Tensor, targets: torch.Tensor, rank: int, world: int, fused: bool) -> nn.Module:
    """Data-parallel steps where our Lamb updates only this rank's flat slices (FSDP1's reduce-scatter view)."""
    model = make_model()
    params = list(model.parameters())
    bounds = [flat_bounds(p.numel(), i, world, rank) for i, p in enumerate(params)]
    shards = [p.detach().flatten()[a:b].clone() for p, (a, b) in zip(params, bounds, strict=True)]
    optimizer = Lamb(shards, lr=LR, weight_decay=0.01, process_group="world", fused=fused)
    for step in range(STEPS):
        nn.functional.mse_loss(model(inputs[step]), targets[step]).backward()
        for p, shard, (a, b) in zip(params, shards, bounds, strict=True):
            grad = p.grad.flatten().clone()
            dist.all_reduce(grad)
            shard.grad = (grad / world)[a:b].clone() if b > a else None
            p.grad = None
        optimizer.step()
        for p, shard, (a, b) in zip(params, shards, bounds, strict=True):
            full = torch.zeros(p.numel(), dtype=p.dtype)
            full[a:b] = shard
            dist.all_reduce(full)
            p.data.copy_(full.view_as(p))
    return model


def main(argv: list[str]) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(STEPS, 8 * world, 16, generator=generator, dtype=torch.float64)
    targets = torch.randn(STEPS, 8 * world, 4, generator=generator, dtype=torch.float64)
    local = slice(rank * 8, (rank + 1) * 8)
    diffs = {}
    references = {"torch_optimizer_local_shards": "torch_optimizer_dtensor", "ours_fused": "ours"}
    for name in ("ours", "ours_fused", "adamw", "torch_optimizer_dtensor", "torch_optimizer_local_shards"):
        reference = make_model()  # unsharded: plain tensors, so torch_optimizer.Lamb is exact here
        train(reference, make_optimizer(references.get(name, name), reference.parameters()), inputs, targets)
        sharded = make_model()
        for layer in sharded:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(sharded)
        train(sharded, make_optimizer(name, sharded.parameters()), inputs[:, local], targets[:, local])
        diffs[name] = max((p.full_tensor() - q).abs().max().item()
                          for p, q in zip(sharded.parameters(), reference.parameters(), strict=True))
    reference = make_model()
    train(reference, make_optimizer("ours", reference.parameters()), inputs, targets)
    for suffix, fused in (("", False), ("_fused", True)):
        flat = train_flat_shards(inputs[:, local], targets[:, local], rank, world, fused)
        pairs = zip(flat.parameters(), reference.parameters(), strict=True)
        diffs["ours_flat_shards" + suffix] = max((p - q).abs().max().item() for p, q in pairs)
    if rank == 0:
        with open(argv[0], "w") as f:
            json.dump(diffs, f)
    dist.destroy_process_group()
