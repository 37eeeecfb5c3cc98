"""Checkpoints and the disk they go to.

A save that fills the disk leaves a truncated file under the checkpoint's name and fails deep inside ``torch.save``
(``RuntimeError: [enforce fail at inline_container.cc:659] . unexpected pos ...``, the ``OSError: [Errno 28]`` only in
its context). Here it becomes one line naming the folder, the bytes a checkpoint needs and the bytes free, and the
truncated file is removed at once (it holds the space the next attempt needs), so ``latest`` and autoresume keep the
previous checkpoint. A run also warns at its start when its save folder has room for fewer than two checkpoints.
"""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path

from perceiver_stream.checkpoint import CheckpointError
from perceiver_stream.train.resume import checkpoints, is_complete

log = logging.getLogger(__name__)

BYTES_PER_PARAMETER = 12  # fp32 weights and the optimizer's two moments: what a checkpoint holds of each parameter


def no_space(error: BaseException) -> OSError | None:
    """The ``ENOSPC`` error behind ``error`` (itself, its cause or its context), or None."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def checkpoint_bytes(folder: Path, parameters: int) -> int:
    """The size of the newest complete checkpoint in ``folder``, or without one an estimate from the parameter count."""
    for path in checkpoints(folder) if folder.is_dir() else []:
        if path.is_file() and is_complete(path):
            return path.stat().st_size
    return parameters * BYTES_PER_PARAMETER


def warn_if_short(folder: Path, parameters: int) -> None:
    """A warning when ``folder``'s disk has room for fewer than two checkpoints."""
    needed, free = checkpoint_bytes(folder, parameters), shutil.disk_usage(folder).free
    if free < 2 * needed:
        log.warning("save_folder %s has %s bytes free, less than two checkpoints (about %s bytes each): a save may "
                    "fill the disk", folder, f"{free:,}", f"{needed:,}")


def full_disk_error(error: BaseException, folder: Path | None, parameters: int) -> CheckpointError | None:
    """For an error that is a full disk: the truncated checkpoints in ``folder`` removed, and the one line to print
    instead of the traceback. None for any other error."""
    full = no_space(error)
    if full is None:
        return None
    if folder is None or not folder.is_dir():
        where = Path(full.filename).parent if full.filename else Path(".")
        return CheckpointError(f"no space left on the device of {where} ({shutil.disk_usage(where).free:,} bytes "
                               f"free): {full.filename or 'a file'} could not be written; free space and relaunch")
    removed = []
    for path in checkpoints(folder):
        if path.is_file() and not is_complete(path):
            path.unlink()
            removed.append(path.name)
    previous = next((p.name for p in checkpoints(folder) if p.is_file()), None)
    needed, free = checkpoint_bytes(folder, parameters), shutil.disk_usage(folder).free
    return CheckpointError(
        f"the disk of save_folder {folder} is full: a checkpoint needs about {needed:,} bytes and {free:,} are free"
        + (f" (the partial {', '.join(removed)} removed)" if removed else "")
        + (f"; {previous} is intact, and autoresume=true resumes from it" if previous else "")
        + "; free space or choose another save_folder, then relaunch")
