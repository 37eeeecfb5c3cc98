"""``python train.py CONFIG --summary``: what a run would do, without training."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from perceiver_stream.data.format import MANIFEST
from perceiver_stream.model import PerceiverMLM
from perceiver_stream.model.flops import training_flops
from perceiver_stream.train.config import TrainConfig, batch_plan


def summary(cfg: TrainConfig, world_size: int) -> str:
    with torch.device("meta"):
        parameters = sum(p.numel() for p in PerceiverMLM(cfg.model).parameters())
    seq = cfg.data.max_seq_len
    predicted = round(cfg.data.mask_prob * seq)
    flops = training_flops(cfg.model, 1, seq, predicted)
    plan = batch_plan(cfg, world_size)
    lines = [
        f"run {cfg.run_name}: {cfg.max_duration}, precision {cfg.precision}, seed {cfg.seed}",
        f"model: {parameters:,} parameters; {cfg.model.num_latents} latents x {cfg.model.num_latent_channels}, "
        f"{cfg.model.encoder.num_self_attention_layers_per_block * cfg.model.encoder.num_self_attention_blocks} "
        f"latent layers, input {seq} x {cfg.model.encoder.num_input_channels}, vocab {cfg.model.vocab_size:,}",
        f"training FLOPs per sample: {flops:.4g} (seq {seq}, ~{predicted} masked tokens decoded)",
        f"batch plan: {plan.devices} device(s) x {plan.device_batch_size} per device = "
        f"{cfg.global_train_batch_size} global; micro-batch {plan.microbatch_size}, "
        f"{plan.accumulation_steps} accumulation step(s)",
        f"optimizer: {cfg.optimizer.name} lr {cfg.optimizer.lr} weight decay {cfg.optimizer.weight_decay}; "
        f"scheduler {cfg.scheduler.name} warmup {cfg.scheduler.t_warmup}",
        "streams:",
    ]
    for name, stream in cfg.data.streams.items():
        for split in ("train", "val"):
            path = Path(stream.local) / split / MANIFEST
            if path.exists():
                counts = json.loads(path.read_text())["counts"]
                found = f"{counts['tokens']:,} tokens, {counts['samples']:,} samples"
            else:
                found = f"no manifest at {path} yet" + (f" (remote {stream.remote})" if stream.remote else "")
            proportion = "" if stream.proportion is None else f" proportion {stream.proportion}"
            lines.append(f"  {name}/{split}{proportion}: {found}")
    fsdp = cfg.parallelism.fsdp
    if fsdp is None:
        lines.append("parallelism: DDP" if world_size > 1 else "parallelism: single device")
    else:
        lines.append(f"parallelism: FSDP{fsdp.version} {fsdp.sharding_strategy}, mixed precision "
                     f"{fsdp.mixed_precision}, {fsdp.state_dict_type} checkpoints")
    lines.append(f"activation checkpointing {cfg.model.activation_checkpointing}, "
                 f"activation offloading {cfg.model.activation_offloading}")
    return "\n".join(lines)
