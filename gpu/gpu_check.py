"""GPU acceptance in one command, sized for a short GPU loan (gpu/README.md).

    python gpu/gpu_check.py [--out gpu_check.json] [--parts model compile lamb train]

On one CUDA device, in bf16 autocast at the blueprint's seq 512:

1. ``model``: the base model (223,155,456 parameters), ours and transformers' ``PerceiverForMaskedLM``: the
   largest micro-batch each fits with and without activation checkpointing, train-step tokens/s and peak
   memory there, MFU of ours (our FLOPs count over the GPU's dense bf16 peak), ours / transformers at the same
   micro-batch, and whether the blueprint's per-device batch of 128 fits.
2. ``compile``: compiled against eager at one micro-batch (the model part's same micro-batch, the largest
   transformers fits without checkpointing, else ``--compile-batch``): ours with every attention layer compiled
   (``model.compile``), transformers' whole model compiled (``torch.compile``, its default mode); tokens/s, the
   first step's seconds (compilation included), MFU of ours, ours / transformers eager and compiled. Then a
   restart: a fresh process with empty inductor and Triton cache directories is handed ours' compiled graphs as a
   checkpoint carries them (``CompileCache``) and times its first compiled step (``restart``: ``first_step_s``
   after one eager step has started CUDA, ``cache_hits``, ``cache_misses``), against this process's first
   compiled step.
3. ``lamb``: one Lamb step over the base parameters, ours vs ``torch_optimizer.Lamb``.
4. ``train``: 30 batches of the ``mlm_base`` recipe through ``perceiver-train`` (launched by ``composer``) with FSDP
   version 1 and 2 on shards
   converted from a small text corpus, with tokens/s and MFU as Composer's SpeedMonitor logs them.

A part whose packages are missing (or whose API this torch lacks) is reported as skipped with the one-line
reason; the others still run. The result is written to ``--out`` and printed as the last line (JSON).
``--smoke`` runs every part at a tiny shape on the CPU: how the test suite checks this script without a GPU.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from perceiver_stream.model import DecoderConfig, EncoderConfig, PerceiverMLM, PerceiverMLMConfig
from perceiver_stream.model.flops import training_flops
from perceiver_stream.model.mlm import IGNORE_INDEX

REPO = Path(__file__).resolve().parents[1]

# Dense bf16 peak of the GPUs our users train on, TFLOP/s (vendor datasheets, no sparsity).
PEAK_BF16_TFLOPS = {"h200": 989.0, "h100": 989.0, "a100": 312.0, "l40s": 362.0, "a10": 125.0}
BLUEPRINT_DEVICE_BATCH = 128
SEQ_LEN = 512
CANDIDATE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024)
TRAIN_BATCHES = 30
PARTS = ("model", "compile", "lamb", "train")


class Skip(Exception):
    """A part that cannot run here; the message is the one-line reason."""


def require(*modules: str) -> None:
    """Raise ``Skip`` naming the first module that does not import (and how to bring it)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as e:  # ImportError, or a package built for another torch failing at import
            raise Skip(f"{module} does not import ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                       "carry it as a wheel: gpu/gpu_wheels.sh") from None


def peak_tflops(device_name: str) -> float | None:
    name = device_name.lower()
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def base_config(smoke: bool) -> PerceiverMLMConfig:
    if smoke:  # a shape transformers can express (decoder qk 256, 8 heads), small enough for a CPU
        return PerceiverMLMConfig(
            vocab_size=512, max_seq_len=32, num_latents=8, num_latent_channels=64,
            encoder=EncoderConfig(
                num_input_channels=48, num_cross_attention_qk_channels=32, num_cross_attention_v_channels=64,
                num_cross_attention_heads=4, num_self_attention_qk_channels=32, num_self_attention_v_channels=64,
                num_self_attention_heads=4, num_self_attention_layers_per_block=3, num_self_attention_blocks=2),
            decoder=DecoderConfig(num_cross_attention_qk_channels=256, num_cross_attention_v_channels=48,
                                  num_cross_attention_heads=8))
    return PerceiverMLMConfig(vocab_size=32000, max_seq_len=SEQ_LEN)


def make_batch(config: PerceiverMLMConfig, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Random tokens with 15% of positions labelled, as whole-word masking produces."""
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(7, config.vocab_size, (batch, config.max_seq_len), generator=g)
    labels = torch.where(torch.rand(input_ids.shape, generator=g) < 0.15, input_ids, IGNORE_INDEX)
    return {"input_ids": input_ids.to(device), "labels": labels.to(device),
            "attention_mask": torch.ones_like(input_ids).to(device)}


def build_step(kind: str, config: PerceiverMLMConfig, checkpointing: bool, device: torch.device, *,
               compile_backend: str | None = None) -> Callable[[dict], None]:
    """One training step (forward, backward, fused AdamW) of ours or transformers' model; with ``compile_backend``
    ours' attention layers (``model.compile``) or transformers' whole model compiled."""
    torch.manual_seed(0)
    if kind == "ours":
        from perceiver_stream.model import checkpoint_layers, compile_layers

        model = PerceiverMLM(config).to(device).train()
        if compile_backend:
            compile_layers(model, backend=compile_backend)
        if checkpointing:
            checkpoint_layers(model)

        def loss_fn(batch: dict) -> torch.Tensor:
            out = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
            return F.cross_entropy(out.logits.float(), out.targets)
    else:
        from transformers import PerceiverForMaskedLM

        from perceiver_stream.model.hf import to_hf_config

        model = PerceiverForMaskedLM(to_hf_config(config)).to(device).train()
        if checkpointing:
            if not model.supports_gradient_checkpointing:
                raise Skip("transformers' PerceiverForMaskedLM does not support gradient checkpointing")
            model.gradient_checkpointing_enable()
        if compile_backend:
            model.compile(backend=compile_backend)

        def loss_fn(batch: dict) -> torch.Tensor:
            return model(inputs=batch["input_ids"], attention_mask=batch["attention_mask"],
                         labels=batch["labels"]).loss

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    autocast = device.type == "cuda"

    def step(batch: dict) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step: Callable[[dict], None], batch: dict, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    step(batch)
    sync(device)
    return time.perf_counter() - start


def measure(step: Callable[[dict], None], config: PerceiverMLMConfig, batch_size: int, device: torch.device,
            steps: int) -> dict:
    """tokens/s (median of ``steps`` after one warm-up), peak memory, and ours' FLOPs per step."""
    batch = make_batch(config, batch_size, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    first = timed(step, batch, device)
    seconds = statistics.median(timed(step, batch, device) for _ in range(steps))
    labelled = int((batch["labels"] != IGNORE_INDEX).sum())
    per_row = int((batch["labels"] != IGNORE_INDEX).sum(1).max()) * batch_size
    return {"micro_batch": batch_size, "tokens_per_s": round(batch_size * config.max_seq_len / seconds),
            "step_s": round(seconds, 4), "first_step_s": round(first, 2),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
            "flops_per_s": training_flops(config, batch_size, config.max_seq_len, labelled, per_row) / seconds}


def with_mfu(entry: dict, kind: str, peak: float | None) -> dict:
    """``entry`` from ``measure`` with its FLOP rate replaced by ours' MFU (where the GPU's peak is known)."""
    flops = entry.pop("flops_per_s")
    if kind == "ours" and peak:
        entry["mfu"] = round(flops / (peak * 1e12), 4)
    return entry


def out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def largest_batch(step: Callable[[dict], None], config: PerceiverMLMConfig, device: torch.device,
                  limit: int) -> int:
    """The largest candidate micro-batch (up to ``limit``) whose training step runs without running out of
    memory; 0 if none does."""
    fits = 0
    for size in (b for b in CANDIDATE_BATCHES if b <= limit):
        try:
            step(make_batch(config, size, device))
            sync(device)
        except Exception as e:
            if not out_of_memory(e):
                raise
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        fits = size
    return fits


def model_part(device: torch.device, smoke: bool, steps: int) -> dict:
    config = base_config(smoke)
    peak = None if smoke else peak_tflops(torch.cuda.get_device_name())
    limit = 8 if smoke else CANDIDATE_BATCHES[-1]
    result: dict = {"parameters": sum(p.numel() for p in PerceiverMLM(config).parameters()),
                    "seq_len": config.max_seq_len, "peak_bf16_tflops": peak}
    for kind in ("ours", "hf"):
        for checkpointing in (False, True):
            key = f"{kind}_{'ac' if checkpointing else 'no_ac'}"
            try:
                step = build_step(kind, config, checkpointing, device)
            except Skip as e:
                result[key] = {"skipped": str(e)}
                continue
            fits = largest_batch(step, config, device, limit)
            entry = {"largest_micro_batch": fits}
            if fits:
                entry.update(with_mfu(measure(step, config, fits, device, steps), kind, peak))
            result[key] = entry
            del step
            if device.type == "cuda":
                torch.cuda.empty_cache()
    # the same micro-batch for both: the largest transformers fits without checkpointing
    same = result["hf_no_ac"].get("largest_micro_batch", 0)
    if same:
        pair = {}
        for kind in ("ours", "hf"):
            pair[kind] = measure(build_step(kind, config, False, device), config, same, device, steps)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        result["same_micro_batch"] = {"micro_batch": same, "ours_tokens_per_s": pair["ours"]["tokens_per_s"],
                                      "hf_tokens_per_s": pair["hf"]["tokens_per_s"],
                                      "ratio": round(pair["ours"]["tokens_per_s"] / pair["hf"]["tokens_per_s"], 3)}
    ours_ac = result["ours_ac"].get("largest_micro_batch", 0)
    result["blueprint_batch_fits_with_ac"] = ours_ac >= BLUEPRINT_DEVICE_BATCH
    return result


def compile_part(device: torch.device, smoke: bool, steps: int, micro_batch: int) -> dict:
    """Each model eager and compiled at ``micro_batch`` (see the module's docstring). The smoke run traces with
    ``eager`` (dynamo traces, nothing is compiled: the script's path, not inductor's speed, is what it checks)."""
    config = base_config(smoke)
    peak = None if smoke else peak_tflops(torch.cuda.get_device_name())
    backend = "eager" if smoke else "inductor"
    result: dict = {"micro_batch": micro_batch}
    for kind in ("ours", "hf"):
        for compile_backend in (None, backend):
            step = build_step(kind, config, False, device, compile_backend=compile_backend)
            result[f"{kind}_{'compiled' if compile_backend else 'eager'}"] = with_mfu(
                measure(step, config, micro_batch, device, steps), kind, peak)
            del step
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if kind == "ours" and compile_backend:
                result["restart"] = restart(smoke, micro_batch, backend)
    for mode in ("eager", "compiled"):
        ours, hf = (result[f"{kind}_{mode}"]["tokens_per_s"] for kind in ("ours", "hf"))
        result[f"ratio_{mode}"] = round(ours / hf, 3)
    result["ours_compiled_speedup"] = round(result["ours_eager"]["step_s"] / result["ours_compiled"]["step_s"], 3)
    return result


def restart(smoke: bool, micro_batch: int, backend: str) -> dict:
    """Ours' first compiled step in a fresh process given this process's compiled graphs (``first_compiled_step``)."""
    saved = torch.compiler.save_cache_artifacts()
    with tempfile.TemporaryDirectory(prefix="gpu-check-restart-") as folder:
        artifacts = Path(folder) / "artifacts.bin"
        artifacts.write_bytes(saved[0] if saved else b"")
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": f"{folder}/inductor", "TRITON_CACHE_DIR": f"{folder}/triton"}
        command = [sys.executable, __file__, "--first-compiled-step", str(artifacts), "--compile-batch",
                   str(micro_batch), "--compile-backend", backend, *(["--smoke"] if smoke else [])]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1][:300] if done.stderr.strip() else done.returncode}
    return json.loads(done.stdout.strip().splitlines()[-1])


def first_compiled_step(artifacts: Path, smoke: bool, micro_batch: int, backend: str) -> dict:
    """In a fresh process: load the compiled graphs, take one eager step (CUDA's start-up), then time ours' first
    compiled step, and count the graphs inductor found in its cache and those it compiled."""
    from torch._dynamo.utils import counters

    data = artifacts.read_bytes()
    info = torch.compiler.load_cache_artifacts(data) if data else None
    device = torch.device("cpu" if smoke else "cuda")
    config = base_config(smoke)
    batch = make_batch(config, micro_batch, device)
    timed(build_step("ours", config, False, device), batch, device)
    seconds = timed(build_step("ours", config, False, device, compile_backend=backend), batch, device)
    return {"first_step_s": round(seconds, 2), "artifacts_mb": round(len(data) / 1e6, 2),
            "loaded_graphs": 0 if info is None else len(info.inductor_artifacts),
            "cache_hits": counters["inductor"]["fxgraph_cache_hit"],
            "cache_misses": counters["inductor"]["fxgraph_cache_miss"]}


def lamb_part(device: torch.device, smoke: bool, steps: int) -> dict:
    require("torch_optimizer")
    import torch_optimizer

    from perceiver_stream.optim import Lamb, OptimizerConfig, param_groups

    cfg = OptimizerConfig()
    optimizers = {}
    for name, cls in (("ours", Lamb), ("torch_optimizer", torch_optimizer.Lamb)):
        torch.manual_seed(0)
        model = PerceiverMLM(base_config(smoke)).to(device)
        generator = torch.Generator(device=device).manual_seed(1)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=generator, device=device) * 1e-3
        optimizers[name] = cls(param_groups(model, cfg.weight_decay, cfg.no_weight_decay), lr=cfg.lr)
        optimizers[name].step()  # allocates the state
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for i in range(steps):
        for name in list(optimizers) if i % 2 == 0 else reversed(list(optimizers)):
            sync(device)
            start = time.perf_counter()
            optimizers[name].step()
            sync(device)
            times[name].append(time.perf_counter() - start)
    ours, reference = (statistics.median(times[n]) * 1e3 for n in ("ours", "torch_optimizer"))
    return {"ours_ms": round(ours, 2), "torch_optimizer_ms": round(reference, 2), "speedup": round(reference / ours, 2)}


def corpus_and_tokenizer(args: argparse.Namespace) -> tuple[Path, Path]:
    for path, what in ((args.corpus, "--corpus"), (args.tokenizer, "--tokenizer")):
        if not path.exists():
            raise Skip(f"{what} {path} does not exist (gpu/gpu_wheels.sh stages both into .gpu/)")
    return args.corpus, args.tokenizer


def train_part(device: torch.device, smoke: bool, args: argparse.Namespace) -> dict:
    require("composer", "streaming", "omegaconf")
    from perceiver_stream.convert.sources import Source
    from perceiver_stream.convert.writer import Options, convert

    corpus, tokenizer = corpus_and_tokenizer(args)
    seq_len = 32 if smoke else SEQ_LEN
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:  # shards and logs, gone afterwards
        work = Path(folder)
        files = tuple(str(p) for p in sorted(corpus.rglob("*")) if p.is_file())
        convert({"wikipedia": Source("files", files=files)}, work / "shards",
                Options(tokenizer=str(tokenizer), max_seq_len=seq_len, val_fraction=0.05, workers=1 if smoke else 2))
        batches = 4 if smoke else TRAIN_BATCHES
        versions = (2,) if smoke else (1, 2)
        result = {}
        for version in versions:
            log_dir = work / f"tb-fsdp{version}"
            overrides = [
                f"data.streams.wikipedia.local={work}/shards/wikipedia", "data.streams.bookcorpus=null",
                f"data.tokenizer={tokenizer}", f"max_duration={batches}ba", f"eval_interval={batches * 10}ba",
                "save_folder=null", "autoresume=false", "loggers.wandb=null", f"loggers.tensorboard.log_dir={log_dir}",
                "progress_bar=false", "console_log_interval=10ba", "callbacks.speed_monitor_window=10",
                f"parallelism.fsdp.version={version}", "data.num_workers=2", "scheduler.t_warmup=10ba",
                f"global_train_batch_size={args.train_batch}", f"device_train_microbatch_size={args.train_batch}",
            ]
            if smoke:
                overrides += ["precision=fp32", "global_train_batch_size=4", "device_train_microbatch_size=4",
                              f"data.max_seq_len={seq_len}", f"model.max_seq_len={seq_len}", "model.num_latents=8",
                              "model.num_latent_channels=64", "model.encoder.num_input_channels=64",
                              "model.encoder.num_self_attention_layers_per_block=1",
                              "model.decoder.num_cross_attention_v_channels=64", "data.num_workers=0",
                              "model.activation_checkpointing=false", "callbacks.speed_monitor_window=2"]
            # The installed package's entry point and recipe, from the work folder: not the checkout's files
            command = [sys.executable, "-m", "composer.cli.launcher", "-n", "1", "-m", "perceiver_stream.train.cli",
                       "mlm_base", *overrides]
            start = time.perf_counter()
            done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=args.train_timeout)
            entry: dict = {"wall_s": round(time.perf_counter() - start, 1)}
            log = args.out.with_name(f"{args.out.stem}-train-fsdp{version}.log")
            log.write_text(done.stdout + done.stderr)
            if done.returncode != 0:
                entry["error"] = failure(done.stderr)
                entry["log"] = str(log)
            else:
                entry.update(speed_monitor(log_dir))
            result[f"fsdp{version}"] = entry
    return result


def failure(stderr: str) -> str:
    """Why a ``perceiver-train`` run failed, in one line: its own error line, else the last exception its traceback
    names (the launcher's last line only says that a rank exited), else the last line."""
    lines = stderr.strip().splitlines() or ["(no output)"]
    raised = [line for line in lines if re.search(r"\w(Error|Exception): ", line)]
    return next((line for line in lines if "perceiver-train: error:" in line), (raised or lines)[-1])[:300]


def speed_monitor(log_dir: Path) -> dict:
    """The last tokens/s and MFU Composer's SpeedMonitor logged (TensorBoard, under the run's name)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for run in log_dir.iterdir():
        events = EventAccumulator(str(run))
        events.Reload()
        for tag, key in (("throughput/tokens_per_sec", "tokens_per_s"), ("throughput/device/mfu", "mfu")):
            if tag in events.Tags()["scalars"]:
                values[key] = round(events.Scalars(tag)[-1].value, 4)
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "gpu_check.json", help="where the JSON result goes")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--corpus", type=Path, default=REPO / ".gpu" / "corpus",
                        help="text files for the train part's shards")
    parser.add_argument("--tokenizer", type=Path, default=REPO / ".gpu" / "xlnet-base-cased")
    parser.add_argument("--compile-batch", type=int, default=32,
                        help="the compile part's micro-batch when the model part has not measured ours' largest")
    parser.add_argument("--train-batch", type=int, default=128, help="global batch of the train part's runs")
    parser.add_argument("--train-timeout", type=int, default=240, help="seconds per perceiver-train run")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (the test suite's check)")
    parser.add_argument("--first-compiled-step", type=Path, help=argparse.SUPPRESS)  # the compile part's restart
    parser.add_argument("--compile-backend", default="inductor", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.first_compiled_step:
        print(json.dumps(first_compiled_step(args.first_compiled_step, args.smoke, args.compile_batch,
                                             args.compile_backend)))
        return 0
    if not args.smoke and not torch.cuda.is_available():
        print("gpu/gpu_check.py: needs a CUDA device (none is visible to torch); see gpu/README.md",
              file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    result: dict = {"date": time.strftime("%Y-%m-%d"), "device": "cpu (smoke)" if args.smoke else
                    torch.cuda.get_device_name(), "torch": torch.__version__}
    parts = {"model": lambda: model_part(device, args.smoke, args.steps),
             "compile": lambda: compile_part(device, args.smoke, args.steps, result.get("model", {}).get(
                 "same_micro_batch", {}).get("micro_batch") or args.compile_batch),
             "lamb": lambda: lamb_part(device, args.smoke, args.steps),
             "train": lambda: train_part(device, args.smoke, args)}
    assert list(parts) == list(PARTS)
    for name in args.parts:
        start = time.perf_counter()
        try:
            result[name] = parts[name]()
        except Skip as e:
            result[name] = {"skipped": str(e)}
        except Exception as e:  # report and go on: one broken part must not cost the others their figures
            result[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
        result[name]["seconds"] = round(time.perf_counter() - start, 1)
        print(f"{name}: {json.dumps(result[name])}", file=sys.stderr, flush=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
