"""Lamb (You et al. 2019, "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
arXiv:1904.00962), exact under sharded data parallelism.

Per parameter ``p`` with gradient ``g`` at step ``t``::

    m = beta1 * m + (1 - beta1) * g                      v = beta2 * v + (1 - beta2) * g^2
    u = m / (sqrt(v) + eps) + weight_decay * p
    r = clamp(||p||, 0, clamp_value) / ||u||             (r = 1 where either norm is 0, or with adam=True)
    p = p - lr * c * r * u                               c = sqrt(1 - beta2^t) / (1 - beta1^t) if debias else 1

the update rule and defaults of ``torch_optimizer.Lamb`` 0.3.0 (paper v3: no debiasing by default).

The trust ratio ``r`` needs the norms of whole parameters. Under FSDP a rank holds only a shard, so every
norm here is computed from local squared sums that are all-reduced together: one all-reduce per step for
all parameters, instead of one per parameter or, as in ``torch_optimizer.Lamb``, none (wrong ratios).
Sharded parameters are recognised as DTensors (FSDP2); for FSDP1 with ``use_orig_params`` pass the
sharding ``process_group`` (``"world"``: the default group, resolved at the first step), over which every
parameter is then assumed to be sharded; a rank holding no element of a parameter contributes zeros.

Updates use ``torch._foreach_*`` over all parameters of a group; no Python loop issues per-parameter
kernels in the hot path. With ``fused``, tensors of ``fused.MIN_ELEMENTS`` or more instead take two compiled
passes each (``perceiver_stream.optim.fused``), the rest the ``_foreach`` path in one batch. The
``_foreach`` update is computed in place in one persistent scratch buffer the size of the local parameters
(not checkpointed: it holds nothing between steps) instead of three fresh parameter-sized allocations per step,
which on CPU cost more in page faults than the arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer

from perceiver_stream.optim import fused as fused_kernels


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The part of ``tensor`` this rank holds (a view: in-place updates reach the DTensor)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


class Lamb(Optimizer):
    """Layer-wise adaptive large-batch optimizer (see the module docstring for the rule).

    Args:
        params: parameters or parameter groups (see ``param_groups`` for the weight-decay split).
        lr: learning rate.
        betas: coefficients of the running averages of the gradient and its square.
        eps: added to the denominator for numerical stability.
        weight_decay: decoupled-into-the-update L2 coefficient (as in the paper).
        clamp_value: upper bound of the weight norm in the trust ratio.
        adam: use trust ratio 1 (Adam with the same update), for comparison.
        debias: apply Adam's bias correction.
        process_group: FSDP1 sharding group (or ``"world"``), when parameters are plain-tensor shards.
        fused: the per-element work as two compiled passes per parameter (``perceiver_stream.optim.fused``)
            where ``torch.compile`` works on the parameters' device, else the ``_foreach`` update. None: on GPUs
            only, where a run is long enough to repay the compilation (~15-20 s a process on a CPU).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        clamp_value: float = 10.0,
        adam: bool = False,
        debias: bool = False,
        process_group: dist.ProcessGroup | str | None = None,
        fused: bool | None = None,
    ):
        if lr <= 0.0:
            raise ValueError(f"lr={lr}: must be positive")
        if eps < 0.0:
            raise ValueError(f"eps={eps}: must not be negative")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"betas[{i}]={beta}: must be in [0, 1)")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay={weight_decay}: must not be negative")
        if clamp_value < 0.0:
            raise ValueError(f"clamp_value={clamp_value}: must not be negative")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, clamp_value=clamp_value,
                        adam=adam, debias=debias)
        super().__init__(params, defaults)
        self.process_group = process_group
        self.fused = fused
        self._scratch: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def _scratch_views(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Views, shaped like ``tensors``, into a reusable buffer (grown when the parameter set grows)."""
        key = (tensors[0].device, tensors[0].dtype)
        numels = [t.numel() for t in tensors]
        if key not in self._scratch or self._scratch[key].numel() < sum(numels):
            self._scratch[key] = torch.empty(sum(numels), device=key[0], dtype=key[1])
        flat = self._scratch[key][:sum(numels)]
        return [view.view_as(t) for view, t in zip(flat.split(numels), tensors, strict=True)]

    def _init_state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _all_reduce_squares(self, squares: torch.Tensor, sharded: list[bool], meshes: list) -> torch.Tensor:
        """Sum the local squared norms of sharded parameters across ranks: one all-reduce per group."""
        if self.process_group is not None:
            group = dist.group.WORLD if self.process_group == "world" else self.process_group
            dist.all_reduce(squares, group=group)
            return squares
        groups: dict[int, tuple[dist.ProcessGroup, list[int]]] = {}
        for i, mesh in enumerate(meshes):
            if sharded[i]:
                group = mesh.get_group()
                groups.setdefault(id(group), (group, []))[1].append(i)
        for group, indices in groups.values():
            index = torch.tensor(indices, device=squares.device)
            # each parameter contributes two entries: its weight norm and its update norm
            rows = torch.cat([index * 2, index * 2 + 1])
            part = squares[rows]
            dist.all_reduce(part, group=group)
            squares[rows] = part
        return squares

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if self.process_group is not None:
                # Every rank must all-reduce the same norms: FSDP1 leaves no gradient on a rank that holds
                # no element of a parameter, so such parameters join with empty gradients.
                for p in group["params"]:
                    if p.grad is None and p.numel() == 0:
                        p.grad = torch.zeros_like(p)
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("Lamb does not support sparse gradients")
            states = [self._init_state(p) for p in params]
            sharded = [isinstance(p, DTensor) or self.process_group is not None for p in params]
            meshes = [p.device_mesh if isinstance(p, DTensor) else None for p in params]
            local_params = [_local(p) for p in params]
            grads = [_local(p.grad) for p in params]
            exp_avgs = [_local(s["exp_avg"]) for s in states]
            exp_avg_sqs = [_local(s["exp_avg_sq"]) for s in states]
            steps = [s["step"] for s in states]
            beta1, beta2 = group["betas"]

            torch._foreach_add_(steps, 1.0)
            device, dtype = local_params[0].device, local_params[0].dtype
            fused = device.type == "cuda" if self.fused is None else self.fused
            fused = fused and fused_kernels.available(device.type)
            # Compiled passes for large tensors; the small ones (norms, biases: over half the tensors, a
            # fraction of a percent of the elements) in one _foreach batch, not a compiled call each.
            compiled = [fused and p.numel() >= fused_kernels.MIN_ELEMENTS for p in local_params]
            large = [i for i, c in enumerate(compiled) if c]
            small = [i for i, c in enumerate(compiled) if not c]
            squares = torch.empty(len(params), 2, device=device, dtype=dtype)
            flats = [[t.detach().view(-1) for t in (local_params[i], grads[i], exp_avgs[i], exp_avg_sqs[i])]
                     for i in large]
            if large:
                moments, apply = fused_kernels.kernels()
                squares[large] = torch.stack([torch.stack(moments(
                    p, g, m, v, beta1, beta2, group["eps"], group["weight_decay"])) for p, g, m, v in flats])
            if small:
                updates = self._foreach_updates(*([tensors[i] for i in small] for tensors in (
                    local_params, grads, exp_avgs, exp_avg_sqs)), group)
                squares[small] = torch.stack([torch.stack(pair) for pair in zip(
                    torch._foreach_norm([local_params[i] for i in small]), torch._foreach_norm(updates),
                    strict=True)]).to(device).square()
            if any(sharded):
                squares = self._all_reduce_squares(squares.view(-1), sharded, meshes)
            norms = squares.view(-1, 2).sqrt()
            weight_norm, update_norm = norms[:, 0].clamp(0, group["clamp_value"]), norms[:, 1]
            if group["adam"]:
                trust = torch.ones_like(weight_norm)
            else:
                trust = torch.where((weight_norm == 0) | (update_norm == 0), 1.0, weight_norm / update_norm)

            if group["debias"]:
                corrections = [math.sqrt(1 - beta2 ** s.item()) / (1 - beta1 ** s.item()) for s in steps]
            else:
                corrections = [1.0] * len(steps)
            scale = trust * torch.tensor(corrections, device=device, dtype=trust.dtype) * -group["lr"]
            if large:
                for (p, _, m, v), factor in zip(flats, scale[large].unbind(), strict=True):
                    apply(p, m, v, factor, group["eps"], group["weight_decay"])
            if small:
                torch._foreach_addcmul_([local_params[i] for i in small], updates, list(scale[small].unbind()))
        return loss

    def _foreach_updates(self, local_params: list[torch.Tensor], grads: list[torch.Tensor],
                         exp_avgs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor], group: dict
                         ) -> list[torch.Tensor]:
        """The moments updated in place and the updates ``u`` (in the scratch buffer), a few passes each."""
        beta1, beta2 = group["betas"]
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)  # beta1 * m + (1 - beta1) * g, one pass
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        updates = self._scratch_views(local_params)
        torch._foreach_copy_(updates, exp_avg_sqs)
        torch._foreach_sqrt_(updates)
        torch._foreach_add_(updates, group["eps"])
        torch._foreach_div_(updates, exp_avgs)  # (sqrt(v) + eps) / m, inverted below: m / (sqrt(v) + eps)
        torch._foreach_reciprocal_(updates)
        if group["weight_decay"] != 0:
            torch._foreach_add_(updates, local_params, alpha=group["weight_decay"])
        return updates
