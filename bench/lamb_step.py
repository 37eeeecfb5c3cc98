"""Time of one Lamb ``step()`` over the base model's parameters: ours (compiled two-pass and ``_foreach``) vs
``torch_optimizer.Lamb``, and ours as a fraction of the memory bandwidth measured in the same process.

The parameter set of ``yamls/mlm_base.yaml``'s model (223M parameters, weight-decay groups as in training),
CPU fp32, random gradients; the optimizers in one process, steps interleaved (rotating which goes first). The
least a Lamb step can move is 7 x 4 bytes per fp32 parameter (read parameter, gradient and both moments; write
parameter and both moments): ``lamb_fraction_of_bandwidth`` is that over the step time over the bandwidth of a
large tensor copy (``bench/limits.py``). The compiled path's first step (compilation) is reported apart.
Prints a last-line JSON object: ``fused_ms``, ``foreach_ms``, ``reference_ms``, ``speedup`` (reference / fused;
goal >= 2), ``foreach_speedup``, ``bandwidth_gb_s``, ``lamb_fraction_of_bandwidth`` (fused; goal >= 0.5),
``foreach_fraction_of_bandwidth``, ``compile_s``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch_optimizer
from limits import memory_bandwidth

from perceiver_stream.model import PerceiverMLM, PerceiverMLMConfig
from perceiver_stream.optim import Lamb, OptimizerConfig, param_groups

LEAST_BYTES_PER_PARAMETER = 7 * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    bandwidth = memory_bandwidth(torch.device("cpu"))
    cfg = OptimizerConfig()
    variants = {"fused": (Lamb, {"fused": True}), "foreach": (Lamb, {}), "reference": (torch_optimizer.Lamb, {})}
    optimizers, first_step = {}, {}
    for name, (cls, options) in variants.items():
        torch.manual_seed(0)
        model = PerceiverMLM(PerceiverMLMConfig())
        generator = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=generator) * 1e-3
        optimizers[name] = cls(param_groups(model, cfg.weight_decay, cfg.no_weight_decay), lr=cfg.lr, **options)
        start = time.perf_counter()
        optimizers[name].step()  # allocates the state (and compiles the fused passes)
        first_step[name] = time.perf_counter() - start
    parameters = sum(p.numel() for group in optimizers["fused"].param_groups for p in group["params"])
    names = list(optimizers)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(args.steps):  # rotate which goes first, so none always runs on a warmer cache
        for name in names[i % len(names):] + names[:i % len(names)]:
            start = time.perf_counter()
            optimizers[name].step()
            times[name].append(time.perf_counter() - start)
    seconds = {name: statistics.median(times[name]) for name in names}

    def fraction(name: str) -> float:
        return round(LEAST_BYTES_PER_PARAMETER * parameters / seconds[name] / bandwidth, 3)

    print(json.dumps({"parameters": parameters, "threads": torch.get_num_threads(),
                      **{f"{name}_ms": round(seconds[name] * 1e3, 1) for name in names},
                      "speedup": round(seconds["reference"] / seconds["fused"], 2),
                      "foreach_speedup": round(seconds["reference"] / seconds["foreach"], 2),
                      "bandwidth_gb_s": round(bandwidth / 1e9, 2),
                      "lamb_fraction_of_bandwidth": fraction("fused"),
                      "foreach_fraction_of_bandwidth": fraction("foreach"),
                      "compile_s": round(first_step["fused"] - first_step["foreach"], 1)}))


if __name__ == "__main__":
    main()
