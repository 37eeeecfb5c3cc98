"""Export a training checkpoint as a ``transformers`` model directory with its tokenizer: ``PerceiverForMaskedLM``
for a pretraining checkpoint, ``PerceiverForSequenceClassification`` (with its label names) for a classifier's.

    perceiver-export CHECKPOINT --out DIR [--config YAML] [key=value ...]

CHECKPOINT is a full checkpoint file (``.../latest-rank0.pt``) or a sharded one (the directory FSDP writes).
Every checkpoint carries the resolved run configuration and the tokenizer, its files and fingerprint
(``RunDescription``), so the checkpoint alone is enough, from any directory on any machine; ``--config`` and
``key=value`` override that configuration (``data.tokenizer=DIR`` loads the tokenizer from there, still checked
against the recorded fingerprint). ``transformers.pipeline("fill-mask", model=DIR)`` (or
``"text-classification"``) then works on the output.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from perceiver_stream.checkpoint import (
    CheckpointError,
    load_weights,
    model_weights,
    read_checkpoint,
    recorded_run,
    stored_tokenizer,
)
from perceiver_stream.config import ConfigError, load
from perceiver_stream.data.tokenizer import TokenizerLoadError, fingerprints, load_tokenizer
from perceiver_stream.model import PerceiverMLM, PerceiverMLMConfig
from perceiver_stream.model.classifier import PerceiverClassifier
from perceiver_stream.model.config import PerceiverClassifierConfig
from perceiver_stream.model.hf import to_hf, to_hf_classifier
from perceiver_stream.remote import RemoteError, is_remote, list_objects
from perceiver_stream.train.config import TrainConfig, build_train_config


def run_config(state: dict[str, Any], checkpoint: str | Path, config: str | None,
               overrides: list[str]) -> tuple[TrainConfig, str | None]:
    """The configuration to export with: the checkpoint's own, or ``config``, with ``overrides`` on top; and
    the tokenizer fingerprint the checkpoint was trained with (None for checkpoints that predate it)."""
    recorded = recorded_run(state)
    if config is not None:
        data = load(config, overrides)
    elif recorded.config is None:
        raise CheckpointError(f"{checkpoint}: this checkpoint does not record its run configuration (written before "
                              "perceiver-stream stored it); pass --config with the training yaml and its overrides")
    else:
        merged = OmegaConf.merge(OmegaConf.create(recorded.config), OmegaConf.from_dotlist(overrides))
        data = OmegaConf.to_container(merged, resolve=True)
    return build_train_config(data), recorded.tokenizer_fingerprint


def load_checkpoint_model(checkpoint: str | Path, config: PerceiverMLMConfig | PerceiverClassifierConfig,
                          state: dict[str, Any] | None = None) -> PerceiverMLM | PerceiverClassifier:
    """Our model (an MLM, or a classifier for a classifier's config) with the weights of a Composer checkpoint."""
    state = read_checkpoint(checkpoint) if state is None else state
    weights = model_weights(state)
    if isinstance(config, PerceiverClassifierConfig):
        num_classes = config.num_classes or len(weights["decoder.linear.bias"])
        model = PerceiverClassifier(replace(config, num_classes=num_classes))
    else:
        model = PerceiverMLM(config)
    load_weights(model, weights, checkpoint)
    return model.eval()


def fetch_intact(uri: str, local: Path) -> Path:
    """A checkpoint file in object storage, downloaded into ``local`` with the digest the run uploaded beside it,
    and checked against it (without one, against its CRC-32s)."""
    from perceiver_stream.train.resume import fetch_checkpoint, is_intact

    folder, name = uri.rstrip("/").rsplit("/", 1)
    path = fetch_checkpoint(folder, name, local, set(list_objects(folder)))
    if not is_intact(path):
        raise CheckpointError(f"{uri}: its bytes do not match the digest recorded when it was written (or, without "
                              "one, its CRC-32s); export an earlier checkpoint")
    return path


def export(checkpoint: str | Path, out: str | Path, *, config: str | None = None,
           overrides: list[str] | None = None) -> Path:
    """Write ``out`` (a ``PerceiverForMaskedLM``, or for a classifier's checkpoint a
    ``PerceiverForSequenceClassification`` with its label names, and the tokenizer) from ``checkpoint``.

    The tokenizer is the one stored in the checkpoint, so the checkpoint alone is enough on any machine; an explicit
    ``data.tokenizer`` (or ``--config``), and checkpoints written before tokenizers were stored, load it from there.
    """
    if is_remote(checkpoint):
        with tempfile.TemporaryDirectory() as folder:
            return export(fetch_intact(str(checkpoint), Path(folder)), out, config=config, overrides=overrides)
    overrides = list(overrides or [])
    state = read_checkpoint(checkpoint)
    cfg, trained_fingerprint = run_config(state, checkpoint, config, overrides)
    stored = recorded_run(state).tokenizer_files
    explicit = config is not None or any(o.startswith("data.tokenizer=") for o in overrides)
    with contextlib.ExitStack() as stack:
        source = cfg.data.tokenizer if explicit or not stored else stack.enter_context(stored_tokenizer(stored))
        try:
            # only what the model takes (pipelines pass every model input the tokenizer names)
            tokenizer = load_tokenizer(source, model_input_names=["input_ids", "attention_mask"])
        except TokenizerLoadError as e:
            raise CheckpointError(f"data.tokenizer={e}; pass data.tokenizer=DIR of the training tokenizer") from None
        if trained_fingerprint is not None and trained_fingerprint not in fingerprints(tokenizer):
            raise CheckpointError(f"data.tokenizer={cfg.data.tokenizer!r} is not the tokenizer {checkpoint} was "
                                  "trained with (another fingerprint); pass data.tokenizer=DIR of the training "
                                  "tokenizer")
        model = load_checkpoint_model(checkpoint, cfg.model, state)
        try:
            if isinstance(model, PerceiverClassifier):
                hf_model = to_hf_classifier(model)
                labels = recorded_run(state).labels or [f"LABEL_{i}" for i in range(model.config.num_classes)]
                hf_model.config.id2label = dict(enumerate(labels))
                hf_model.config.label2id = {label: i for i, label in enumerate(labels)}
            else:
                hf_model = to_hf(model)
        except ValueError as e:
            raise CheckpointError(f"{checkpoint}: {e}") from None
        out = Path(out)
        hf_model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="perceiver-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a Composer checkpoint file (also s3://...) or sharded checkpoint directory")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--config", default=None, help="a yaml replacing the configuration the checkpoint records")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of that configuration")
    args = parser.parse_intermixed_args(argv)
    try:
        print(export(args.checkpoint, args.out, config=args.config, overrides=args.overrides))
    except (CheckpointError, ConfigError, RemoteError) as e:
        print(f"perceiver-export: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
