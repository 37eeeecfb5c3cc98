"""Training-step throughput of our Perceiver IO MLM vs transformers' PerceiverForMaskedLM.

Same configuration, same batch (15% of positions labelled, as whole-word masking produces), same optimizer
(fused AdamW), in one process, steps interleaved (alternating which goes first) so both see the same machine
state. CPU fp32; on a GPU bf16 autocast. Each model's step is also stated as a fraction of the dense matmul
throughput measured between the same steps (``bench/limits.py``: a large fp32 GEMM on a CPU, bf16 on a GPU; the
best seen, as a shared host's speed drifts), an MFU that means the same on either: ``ours_fraction_of_matmul_peak``
counts our step's FLOPs as SpeedMonitor does (``perceiver_stream.model.flops.training_flops``: the decoder and head
run on labelled positions only); ``hf_fraction_of_matmul_peak`` counts what PerceiverForMaskedLM computes (the same
formula with every position decoded and scored). Prints one JSON object per shape, last: ``{"shape", "device",
"ours_tokens_per_s", "hf_tokens_per_s", "ratio", "matmul_peak_tflop_s", "ours_fraction_of_matmul_peak",
"hf_fraction_of_matmul_peak"}``.

``--compile``: then, in the same process, ours with every attention layer compiled (``model.compile``:
``compile_layers``, inductor) and transformers' model compiled whole (``torch.compile``, default mode), timed the
same way: adds ``compiled_*`` figures, ``{ours,hf}_compiled_speedup`` over their eager steps, each one's
``*_first_step_s`` (compilation included) and ``ours_compiled_loss_relative_difference`` (the first compiled step's
loss against the same weights' eager loss on the same batch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from limits import matmul_peak
from transformers import PerceiverForMaskedLM

from perceiver_stream.model import DecoderConfig, EncoderConfig, PerceiverMLM, PerceiverMLMConfig
from perceiver_stream.model.flops import training_flops
from perceiver_stream.model.hf import to_hf_config
from perceiver_stream.model.mlm import IGNORE_INDEX, compile_layers

SHAPES = {
    "small": dict(
        batch=8,
        config=PerceiverMLMConfig(
            vocab_size=32000, max_seq_len=256, num_latents=64, num_latent_channels=256,
            encoder=EncoderConfig(
                num_input_channels=128, num_cross_attention_qk_channels=128, num_cross_attention_v_channels=256,
                num_self_attention_qk_channels=128, num_self_attention_v_channels=256,
                num_self_attention_layers_per_block=4,
            ),
            decoder=DecoderConfig(num_cross_attention_qk_channels=256, num_cross_attention_v_channels=128),
        ),
    ),
    "base": dict(batch=1, config=PerceiverMLMConfig(vocab_size=32000, max_seq_len=512)),
}


def make_batch(config: PerceiverMLMConfig, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(7, config.vocab_size, (batch, config.max_seq_len), generator=g)
    labels = torch.where(torch.rand(input_ids.shape, generator=g) < 0.15, input_ids, IGNORE_INDEX)
    attention_mask = torch.ones_like(input_ids)
    return {k: v.to(device) for k, v in dict(input_ids=input_ids, labels=labels, attention_mask=attention_mask).items()}


def step_fn(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], autocast: bool,
            losses: list[float]) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))

    return step


def timed(step: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(steps_fns: dict[str, Callable[[], None]], steps: int, device: torch.device) -> tuple[dict, float]:
    """Median seconds of each model's step, alternating which goes first so neither always runs after the other,
    and the best matmul rate measured between them."""
    times: dict[str, list[float]] = {name: [] for name in steps_fns}
    peak = 0.0
    for i in range(steps):
        peak = max(peak, matmul_peak(device, repeats=2))
        for name in list(steps_fns) if i % 2 == 0 else reversed(list(steps_fns)):
            times[name].append(timed(steps_fns[name], device))
    return {name: statistics.median(t) for name, t in times.items()}, peak


def run(shape: str, steps: int, device: torch.device, compile_models: bool) -> dict:
    batch_size, config = SHAPES[shape]["batch"], SHAPES[shape]["config"]
    torch.manual_seed(0)
    ours = PerceiverMLM(config).to(device).train()
    hf = PerceiverForMaskedLM(to_hf_config(config)).to(device).train()
    batch = make_batch(config, batch_size, device)
    autocast = device.type == "cuda"

    def ours_loss() -> torch.Tensor:
        out = ours(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
        return F.cross_entropy(out.logits.float(), out.targets)

    def hf_loss() -> torch.Tensor:
        return hf(inputs=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss

    losses: dict[str, list[float]] = {"ours": [], "hf": []}
    steps_fns = {name: step_fn(model, loss, autocast, losses[name])
                 for name, model, loss in (("ours", ours, ours_loss), ("hf", hf, hf_loss))}
    for fn in steps_fns.values():  # warm-up: allocator, kernels, optimizer state
        timed(fn, device)
    seconds, peak = measure(steps_fns, steps, device)
    tokens = batch_size * config.max_seq_len
    labelled = batch["labels"].ne(IGNORE_INDEX).sum(dim=1)
    flops = {"ours": training_flops(config, batch_size, config.max_seq_len, int(labelled.sum()),
                                    int(labelled.max()) * batch_size),
             "hf": training_flops(config, batch_size, config.max_seq_len, tokens)}

    def speed(prefix: str, seconds: dict[str, float], peak: float) -> dict:
        """tokens/s, ours / transformers and fractions of the matmul peak, keys starting with ``prefix``."""
        return {f"{prefix}ours_tokens_per_s": round(tokens / seconds["ours"], 1),
                f"{prefix}hf_tokens_per_s": round(tokens / seconds["hf"], 1),
                f"{prefix}ratio": round(seconds["hf"] / seconds["ours"], 3),
                f"{prefix}matmul_peak_tflop_s": round(peak / 1e12, 4),
                **{f"{prefix}{name}_fraction_of_matmul_peak": round(flops[name] / seconds[name] / peak, 3)
                   for name in flops}}

    result = {"shape": shape, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "precision": "amp_bf16" if autocast else "fp32", **speed("", seconds, peak)}
    if compile_models:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            eager_loss = float(ours_loss())  # the weights the first compiled step starts from
        compile_layers(ours)
        hf.compile()
        for name, fn in steps_fns.items():
            result[f"{name}_first_step_s"] = round(timed(fn, device), 1)  # compilation included
        result["ours_compiled_loss_relative_difference"] = float(f"{abs(losses['ours'][-1] / eager_loss - 1):.2e}")
        compiled, compiled_peak = measure(steps_fns, steps, device)
        result.update(speed("compiled_", compiled, compiled_peak),
                      **{f"{name}_compiled_speedup": round(seconds[name] / compiled[name], 3) for name in compiled})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--steps", type=int, default=None, help="timed steps per model (default: small 10, base 5)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="also both models compiled (see above)")
    args = parser.parse_args()
    device = torch.device(args.device)
    results = [run(s, args.steps or (10 if s == "small" else 5), device, args.compile) for s in args.shapes]
    for result in results:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
