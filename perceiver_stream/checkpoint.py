"""Reading our Composer checkpoints outside the Trainer: their weights and the run they record.

Export and fine-tuning both start from a checkpoint alone: every checkpoint carries the resolved run configuration,
the tokenizer's fingerprint and, for a classifier, its label names (``RunDescription``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from perceiver_stream.errors import first_line

DESCRIPTION = "RunDescription"  # the callback whose state holds the run configuration (train/callbacks.py)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message names the file and the fix."""


@dataclass
class RecordedRun:
    """What a checkpoint records about the run that wrote it (None where it predates the record): the resolved
    configuration, the tokenizer's fingerprint and files (what ``save_pretrained`` writes, by file name), and a
    classifier's label names."""

    config: dict[str, Any] | None
    tokenizer_fingerprint: str | None
    labels: list[str] | None
    tokenizer_files: dict[str, bytes] | None = None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The ``state`` of a Composer checkpoint: a ``torch.save`` file, or a sharded checkpoint directory
    (``torch.distributed.checkpoint``), which is gathered into one state on CPU first."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        if path.is_dir():
            if not (path / ".metadata").exists():
                raise CheckpointError(f"{path}: a directory without .metadata, so not a sharded checkpoint; pass the "
                                      "checkpoint file or the directory FSDP wrote")
            from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

            with tempfile.TemporaryDirectory() as tmp:
                dcp_to_torch_save(path, Path(tmp) / "full.pt")
                checkpoint = torch.load(Path(tmp) / "full.pt", map_location="cpu", weights_only=False)
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - torch raises many types for a truncated or foreign file
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({first_line(e)}); it is truncated or not a "
                              "Composer checkpoint") from None
    state = checkpoint.get("state") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a Composer checkpoint (no state.model)")
    return state


def recorded_run(state: dict[str, Any]) -> RecordedRun:
    description = state.get("callbacks", {}).get(DESCRIPTION)
    if description is None:
        return RecordedRun(None, None, None)
    return RecordedRun(description["config"], description["tokenizer_fingerprint"], description.get("labels"),
                       description.get("tokenizer_files"))


def tokenizer_files(tokenizer) -> dict[str, bytes]:
    """A tokenizer's ``save_pretrained`` files by name: a few MB that make a checkpoint usable on any machine."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {path.name: path.read_bytes() for path in sorted(Path(tmp).iterdir()) if path.is_file()}


@contextmanager
def stored_tokenizer(files: dict[str, bytes]) -> Iterator[str]:
    """A directory holding a checkpoint's tokenizer files, for ``from_pretrained``, while the block runs."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / Path(name).name).write_bytes(data)
        yield tmp


def model_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's weights under its own parameter names (Composer's ``model.`` prefix and activation
    checkpointing's wrapper names removed)."""
    return {key.removeprefix("model.").replace("._checkpoint_wrapped_module", ""): value
            for key, value in state["model"].items()}


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], checkpoint: str | Path) -> None:
    """``model.load_state_dict(weights)``, with a mismatch as one line naming the parameters."""
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        details = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
        raise CheckpointError(f"{checkpoint}: its weights do not fit the configured model "
                              f"({'; '.join(details)[:400]}); the model.* settings differ from training") from None
