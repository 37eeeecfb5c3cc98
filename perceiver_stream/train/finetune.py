"""The classifier a fine-tuning run starts from: ``model.encoder_from`` loaded, checked, and frozen if asked.

A pretrained encoder is only worth loading into the architecture and vocabulary it was trained for, so before any
weight is copied the checkpoint's recorded settings are compared key by key with the yaml's (a mismatch names the
keys) and its tokenizer's fingerprint with the one the shards were converted with.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from perceiver_stream.checkpoint import CheckpointError, model_weights, read_checkpoint, recorded_run
from perceiver_stream.config import ConfigError
from perceiver_stream.data.tokenizer import TokenizerLoadError, fingerprint, load_tokenizer
from perceiver_stream.errors import first_line
from perceiver_stream.model.classifier import PerceiverClassifier, build_classifier, encoder_state, freeze_encoder
from perceiver_stream.model.config import (
    RUNTIME_KEYS,
    PerceiverClassifierConfig,
    PerceiverConfig,
    differing_settings,
)


def check_settings(source: str, pretrained: dict[str, Any], configured: dict[str, Any]) -> None:
    """The encoder's settings (``PerceiverConfig``'s keys, the decoder aside) must be pretraining's."""
    differing = differing_settings(pretrained, configured, ignore=RUNTIME_KEYS,
                                   sections={f.name for f in dataclasses.fields(PerceiverConfig)})
    if differing:
        found = "; ".join(f"model.{key}={now!r} but {source} has {was!r}" for key, was, now in differing)
        overrides = " ".join(f"model.{key}={was}" for key, was, _ in differing)
        raise ConfigError(f"model.encoder_from={source}: the encoder was trained with other settings: {found}; set "
                          f"them as in pretraining: {overrides}")


def _from_transformers(source: Path, tokenizer_fingerprints: tuple[str, ...]) -> tuple[dict[str, torch.Tensor],
                                                                                    dict[str, Any]]:
    """The weights (under our names) and settings of a transformers ``PerceiverForMaskedLM`` directory."""
    from transformers import PerceiverForMaskedLM

    from perceiver_stream.model.hf import from_hf

    try:
        hf_model = PerceiverForMaskedLM.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.encoder_from={source}: not a PerceiverForMaskedLM directory ({first_line(e)})") \
            from None
    try:
        tokenizer = load_tokenizer(str(source))
    except TokenizerLoadError:
        tokenizer = None  # a model saved without its tokenizer: the vocabulary size is still checked
    if tokenizer is not None and fingerprint(tokenizer) not in tokenizer_fingerprints:
        raise ConfigError(f"model.encoder_from={source}: its tokenizer is not data.tokenizer (another fingerprint); "
                          "fine-tune on shards converted with the pretraining tokenizer")
    model = from_hf(hf_model)
    return model.state_dict(), dataclasses.asdict(model.config)


def _from_checkpoint(source: Path, tokenizer_fingerprints: tuple[str, ...]) -> tuple[dict[str, torch.Tensor],
                                                                                  dict[str, Any]]:
    """The weights and recorded ``model:`` settings of a checkpoint of ours (MLM or classifier)."""
    try:
        state = read_checkpoint(source)
    except CheckpointError as e:
        raise ConfigError(f"model.encoder_from={e}") from None
    recorded = recorded_run(state)
    if recorded.config is None:
        raise ConfigError(f"model.encoder_from={source}: this checkpoint does not record its run configuration "
                          "(written before perceiver-stream stored it); export it with perceiver-export --config and "
                          "pass the exported directory")
    if recorded.tokenizer_fingerprint not in tokenizer_fingerprints:
        raise ConfigError(f"model.encoder_from={source} was trained with another tokenizer than data.tokenizer "
                          f"({recorded.config['data']['tokenizer']!r}, another fingerprint); fine-tune on shards "
                          "converted with the pretraining tokenizer")
    return model_weights(state), recorded.config["model"]


def load_encoder(model: PerceiverClassifier, source: str, *, tokenizer_fingerprints: tuple[str, ...]) -> None:
    """Copy the input adapter and encoder of ``source`` into ``model`` (and a classifier checkpoint's decoder);
    its tokenizer must have one of ``tokenizer_fingerprints`` (``data.tokenizer.fingerprints``)."""
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"model.encoder_from={source}: no such checkpoint or directory")
    if path.is_dir() and (path / "config.json").exists():
        weights, settings = _from_transformers(path, tokenizer_fingerprints)
    else:
        weights, settings = _from_checkpoint(path, tokenizer_fingerprints)
    configured = dataclasses.asdict(model.config)
    check_settings(source, settings, configured)
    is_classifier = any(key.startswith("decoder.query") for key in weights)
    wanted = model.state_dict() if is_classifier else encoder_state(model.state_dict())
    if is_classifier and len(weights["decoder.linear.bias"]) != model.config.num_classes:
        raise ConfigError(f"model.encoder_from={source}: a classifier of {len(weights['decoder.linear.bias'])} "
                          f"classes, the shards have {model.config.num_classes} labels")
    for key, value in wanted.items():
        if key not in weights or weights[key].shape != value.shape:
            found = "missing" if key not in weights else f"shape {tuple(weights[key].shape)}"
            raise ConfigError(f"model.encoder_from={source}: {key} is {found}, the model needs {tuple(value.shape)}; "
                              "the model.* settings differ from the checkpoint's")
    with torch.no_grad():
        for key, value in wanted.items():
            value.copy_(weights[key])


def initial_classifier(config: PerceiverClassifierConfig, num_classes: int,
                       tokenizer_fingerprints: tuple[str, ...]) -> PerceiverClassifier:
    """The classifier a run starts from: fresh (an untrained MLM's encoder), or ``config.encoder_from`` loaded;
    with ``config.freeze_encoder`` its input adapter and encoder frozen."""
    try:
        model = build_classifier(config, num_classes)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if config.encoder_from is not None:
        load_encoder(model, config.encoder_from, tokenizer_fingerprints=tokenizer_fingerprints)
    if config.freeze_encoder:
        freeze_encoder(model)
    return model

