"""Time of one Lamb ``step()`` over the base model's parameters: ours vs ``torch_optimizer.Lamb``.

The parameter set of ``yamls/mlm_base.yaml``'s model (223M parameters, weight-decay groups as in training),
CPU fp32, random gradients; both optimizers in one process, steps interleaved (alternating which goes
first). Prints a last-line JSON object ``{"ours_ms", "reference_ms", "speedup"}`` (goal: speedup >= 2).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch_optimizer

from perceiver_stream.model import PerceiverMLM, PerceiverMLMConfig
from perceiver_stream.optim import Lamb, OptimizerConfig, param_groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    cfg = OptimizerConfig()
    models, optimizers = [], {}
    for name, cls in (("ours", Lamb), ("reference", torch_optimizer.Lamb)):
        torch.manual_seed(0)
        model = PerceiverMLM(PerceiverMLMConfig())
        generator = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=generator) * 1e-3
        optimizers[name] = cls(param_groups(model, cfg.weight_decay, cfg.no_weight_decay), lr=cfg.lr)
        models.append(model)
    parameters = sum(p.numel() for p in models[0].parameters())
    for optimizer in optimizers.values():  # first step allocates the state
        optimizer.step()
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for i in range(args.steps):  # alternate which goes first, so neither always runs on a warmer cache
        for name in list(optimizers) if i % 2 == 0 else reversed(list(optimizers)):
            start = time.perf_counter()
            optimizers[name].step()
            times[name].append(time.perf_counter() - start)
    ours, reference = (statistics.median(times[n]) * 1e3 for n in ("ours", "reference"))
    print(json.dumps({"parameters": parameters, "ours_ms": round(ours, 1), "reference_ms": round(reference, 1),
                      "speedup": round(reference / ours, 2)}))


if __name__ == "__main__":
    main()
