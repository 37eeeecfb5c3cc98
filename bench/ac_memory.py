"""Peak memory of one training step with and without activation checkpointing.

Each variant runs in its own process (so one cannot reuse the other's freed memory) on a shape where
activations dominate: base widths, 8 latent layers, batch 16, seq 512. On a GPU the peak is
``torch.cuda.max_memory_allocated``; on CPU it is the growth of the process's peak resident set during the
step (model weights excluded), with glibc's mmap threshold fixed so freed tensors leave the resident set at
once; otherwise the allocator keeps the pages of every recomputed layer and RSS shows no saving.
Prints a last-line JSON object with ``peak_mb_with``, ``peak_mb_without``, ``ratio`` (with / without; goal <= 0.6).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import torch

from perceiver_stream.model import EncoderConfig, PerceiverMLMConfig
from perceiver_stream.model.composer_model import ComposerPerceiverMLM
from perceiver_stream.model.mlm import IGNORE_INDEX


def peak_mb(checkpointing: bool, batch_size: int, layers: int, device: str) -> float:
    config = PerceiverMLMConfig(
        encoder=EncoderConfig(num_self_attention_layers_per_block=layers), activation_checkpointing=checkpointing
    )
    model = ComposerPerceiverMLM(config, mask_token_id=6).to(device)
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(7, config.vocab_size, (batch_size, config.max_seq_len), generator=g)
    labels = torch.where(torch.rand(input_ids.shape, generator=g) < 0.15, input_ids, IGNORE_INDEX)
    batch = {"input_ids": input_ids.to(device), "labels": labels.to(device),
             "attention_mask": torch.ones_like(input_ids, device=device)}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
        loss = model.loss(model(batch), batch)
    loss.backward()
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return (peak - before) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", choices=["with", "without"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps({"peak_mb": peak_mb(args.child == "with", args.batch_size, args.layers, args.device)}))
        return
    peaks = {}
    for variant in ("with", "without"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", variant, "--batch-size", str(args.batch_size),
             "--layers", str(args.layers), "--device", args.device],
            check=True, capture_output=True, text=True, env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"},
        ).stdout
        peaks[variant] = json.loads(out.strip().splitlines()[-1])["peak_mb"]
    print(json.dumps({
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "batch_size": args.batch_size, "layers": args.layers,
        "peak_mb_with": round(peaks["with"], 1), "peak_mb_without": round(peaks["without"], 1),
        "ratio": round(peaks["with"] / peaks["without"], 3),
    }))


if __name__ == "__main__":
    main()
