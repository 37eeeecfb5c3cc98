"""Export a training checkpoint as a ``transformers`` ``PerceiverForMaskedLM`` directory with its tokenizer.

    perceiver-export CHECKPOINT --out DIR [--config YAML] [key=value ...]

CHECKPOINT is a full checkpoint file (``.../latest-rank0.pt``) or a sharded one (the directory FSDP writes).
Every checkpoint carries the resolved run configuration and the tokenizer's fingerprint (``RunDescription``),
so the checkpoint alone is enough; ``--config`` and ``key=value`` override that configuration (for example
``data.tokenizer=DIR`` when the tokenizer lives elsewhere on this machine). ``transformers.pipeline("fill-mask",
model=DIR)`` then works on the output.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from perceiver_stream.config import ConfigError, build, load
from perceiver_stream.data.tokenizer import TokenizerLoadError, fingerprint, load_tokenizer
from perceiver_stream.errors import first_line
from perceiver_stream.model import PerceiverMLM, PerceiverMLMConfig
from perceiver_stream.model.hf import to_hf
from perceiver_stream.train.config import TrainConfig

DESCRIPTION = "RunDescription"  # the callback whose state holds the run configuration (train/callbacks.py)


class ExportError(ValueError):
    """A checkpoint that cannot be exported as asked; the message names the file and the fix."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The ``state`` of a Composer checkpoint: a ``torch.save`` file, or a sharded checkpoint directory
    (``torch.distributed.checkpoint``), which is gathered into one state on CPU first."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path}: no such checkpoint")
    try:
        if path.is_dir():
            if not (path / ".metadata").exists():
                raise ExportError(f"{path}: a directory without .metadata, so not a sharded checkpoint; pass the "
                                  "checkpoint file or the directory FSDP wrote")
            from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

            with tempfile.TemporaryDirectory() as tmp:
                dcp_to_torch_save(path, Path(tmp) / "full.pt")
                checkpoint = torch.load(Path(tmp) / "full.pt", map_location="cpu", weights_only=False)
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - torch raises many types for a truncated or foreign file
        raise ExportError(f"{path}: cannot be read as a checkpoint ({first_line(e)}); it is truncated or not a "
                          "Composer checkpoint") from None
    state = checkpoint.get("state") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or "model" not in state:
        raise ExportError(f"{path}: not a Composer checkpoint (no state.model)")
    return state


def run_config(state: dict[str, Any], checkpoint: str | Path, config: str | None,
               overrides: list[str]) -> tuple[TrainConfig, str | None]:
    """The configuration to export with: the checkpoint's own, or ``config``, with ``overrides`` on top; and
    the tokenizer fingerprint the checkpoint was trained with (None for checkpoints that predate it)."""
    description = state.get("callbacks", {}).get(DESCRIPTION)
    if config is not None:
        data = load(config, overrides)
    elif description is None:
        raise ExportError(f"{checkpoint}: this checkpoint does not record its run configuration (written before "
                          "perceiver-stream stored it); pass --config with the training yaml and its overrides")
    else:
        merged = OmegaConf.merge(OmegaConf.create(description["config"]), OmegaConf.from_dotlist(overrides))
        data = OmegaConf.to_container(merged, resolve=True)
    return build(TrainConfig, data), None if description is None else description["tokenizer_fingerprint"]


def load_checkpoint_model(checkpoint: str | Path, config: PerceiverMLMConfig,
                          state: dict[str, Any] | None = None) -> PerceiverMLM:
    """Our model with the weights of a Composer checkpoint (``state.model`` keys prefixed ``model.``)."""
    state = read_checkpoint(checkpoint) if state is None else state
    weights = {key.removeprefix("model.").replace("._checkpoint_wrapped_module", ""): value
               for key, value in state["model"].items()}
    model = PerceiverMLM(config)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        details = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
        raise ExportError(f"{checkpoint}: its weights do not fit the configured model ({'; '.join(details)[:400]}); "
                          "the model.* settings differ from training") from None
    return model.eval()


def export(checkpoint: str | Path, out: str | Path, *, config: str | None = None,
           overrides: list[str] | None = None) -> Path:
    """Write ``out`` (a ``PerceiverForMaskedLM`` directory with the tokenizer) from ``checkpoint``."""
    state = read_checkpoint(checkpoint)
    cfg, trained_fingerprint = run_config(state, checkpoint, config, list(overrides or []))
    try:
        # only what PerceiverForMaskedLM takes (pipelines pass every model input the tokenizer names)
        tokenizer = load_tokenizer(cfg.data.tokenizer, model_input_names=["input_ids", "attention_mask"])
    except TokenizerLoadError as e:
        raise ExportError(f"data.tokenizer={e}; pass data.tokenizer=DIR of the training tokenizer") from None
    if trained_fingerprint is not None and fingerprint(tokenizer) != trained_fingerprint:
        raise ExportError(f"data.tokenizer={cfg.data.tokenizer!r} is not the tokenizer {checkpoint} was trained "
                          "with (another fingerprint); pass data.tokenizer=DIR of the training tokenizer")
    model = load_checkpoint_model(checkpoint, cfg.model, state)
    try:
        hf_model = to_hf(model)
    except ValueError as e:
        raise ExportError(f"{checkpoint}: {e}") from None
    out = Path(out)
    hf_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="perceiver-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a Composer checkpoint file or sharded checkpoint directory")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--config", default=None, help="a yaml replacing the configuration the checkpoint records")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of that configuration")
    args = parser.parse_intermixed_args(argv)
    try:
        print(export(args.checkpoint, args.out, config=args.config, overrides=args.overrides))
    except (ExportError, ConfigError) as e:
        print(f"perceiver-export: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
