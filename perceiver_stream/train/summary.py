"""``python train.py CONFIG --summary``: what a run would do, without training."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from perceiver_stream.data.format import MANIFEST
from perceiver_stream.model import PerceiverMLM
from perceiver_stream.model.classifier import PerceiverClassifier
from perceiver_stream.model.flops import classifier_training_flops, training_flops
from perceiver_stream.train.config import ClassifierTrainConfig, TrainConfig, batch_plan


def label_names(cfg: ClassifierTrainConfig) -> list[str]:
    """The labels of the first labelled stream whose manifest is here (none yet: [])."""
    for stream in cfg.data.streams.values():
        path = Path(stream.local) / "train" / MANIFEST
        if path.exists():
            return json.loads(path.read_text()).get("labels", [])
    return []


def summary(cfg: TrainConfig, world_size: int) -> str:
    seq = cfg.data.max_seq_len
    if isinstance(cfg, ClassifierTrainConfig):
        classes = cfg.model.num_classes or len(label_names(cfg)) or 2
        model_cfg = replace(cfg.model, num_classes=classes)
        with torch.device("meta"):
            parameters = sum(p.numel() for p in PerceiverClassifier(model_cfg).parameters())
        flops = classifier_training_flops(model_cfg, 1, seq, frozen_encoder=cfg.model.freeze_encoder)
        work = f"{classes} classes, encoder {'frozen' if cfg.model.freeze_encoder else 'trained'}, from " \
               f"{cfg.model.encoder_from or 'a fresh initialisation'}"
    else:
        with torch.device("meta"):
            parameters = sum(p.numel() for p in PerceiverMLM(cfg.model).parameters())
        predicted = round(cfg.data.mask_prob * seq)
        flops = training_flops(cfg.model, 1, seq, predicted)
        work = f"~{predicted} masked tokens decoded"
    plan = batch_plan(cfg, world_size)
    lines = [
        f"run {cfg.run_name}: {cfg.max_duration}, precision {cfg.precision}, seed {cfg.seed}",
        f"model: {parameters:,} parameters; {cfg.model.num_latents} latents x {cfg.model.num_latent_channels}, "
        f"{cfg.model.encoder.num_self_attention_layers_per_block * cfg.model.encoder.num_self_attention_blocks} "
        f"latent layers, input {seq} x {cfg.model.encoder.num_input_channels}, vocab {cfg.model.vocab_size:,}",
        f"training FLOPs per sample: {flops:.4g} (seq {seq}, {work})",
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
    if cfg.callbacks.probes:
        lines.append(f"linear probes at every evaluation (eval_interval {cfg.eval_interval}"
                     f"{', eval_first' if cfg.eval_first else ''}):")
    for name, path in cfg.callbacks.probes.items():
        manifests = {split: Path(path) / split / MANIFEST for split in ("train", "val")}
        if all(manifest.exists() for manifest in manifests.values()):
            train, val = (json.loads(manifest.read_text()) for manifest in manifests.values())
            fitted = min(train["counts"]["samples"], cfg.callbacks.probe_train_samples)
            lines.append(f"  {name}: {len(train.get('labels', []))} labels, fitted on {fitted:,} of "
                         f"{train['counts']['samples']:,} train samples, scored on {val['counts']['samples']:,} val")
        else:
            lines.append(f"  {name}: no manifests under {path} yet")
    fsdp = cfg.parallelism.fsdp
    if fsdp is None:
        lines.append("parallelism: DDP" if world_size > 1 else "parallelism: single device")
    else:
        lines.append(f"parallelism: FSDP{fsdp.version} {fsdp.sharding_strategy}, mixed precision "
                     f"{fsdp.mixed_precision}, {fsdp.state_dict_type} checkpoints")
    lines.append(f"activation checkpointing {cfg.model.activation_checkpointing}, "
                 f"activation offloading {cfg.model.activation_offloading}, compiled layers {cfg.model.compile}"
                 + (f" ({cfg.model.compile_backend})" if cfg.model.compile else ""))
    return "\n".join(lines)
