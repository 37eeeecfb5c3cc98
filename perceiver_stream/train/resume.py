"""Make autoresume survive a kill at any moment, including while a checkpoint is being written.

Composer writes ``ep{e}-ba{b}-rank{r}.pt`` in place, then removes and recreates the ``latest-rank{r}.pt``
symlink. A kill during the write leaves a truncated newest file; a kill between removing and recreating the
link leaves no ``latest`` at all, and autoresume would silently start from scratch. Before the Trainer
starts, ``repair_latest`` points every ``latest`` link at the newest *complete* checkpoint and moves
incomplete ones aside (renamed ``*.incomplete``, never deleted).
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^ep(\d+)-ba(\d+)(-rank0\.pt)?$")


def is_complete(path: Path) -> bool:
    """A ``torch.save`` file is a zip whose central directory is written last; a sharded (DCP) checkpoint
    directory gets its ``.metadata`` last."""
    if path.is_dir():
        return (path / ".metadata").exists()
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def repair_latest(save_folder: str | Path, world_size: int = 1) -> Path | None:
    """Point ``latest-rank{r}.pt`` (r < world_size) at the newest complete checkpoint in ``save_folder``.

    Returns that checkpoint, or None when there is none (a fresh run). Only local folders are repaired.
    """
    folder = Path(save_folder)
    if not folder.is_dir():
        return None
    candidates = []
    for path in folder.iterdir():
        match = _CHECKPOINT.match(path.name)
        if match and not path.is_symlink():
            candidates.append(((int(match.group(1)), int(match.group(2))), path))
    newest = None
    for _, path in sorted(candidates, reverse=True):
        if is_complete(path):
            newest = path
            break
        incomplete = path.with_name(path.name + ".incomplete")
        log.warning("checkpoint %s is incomplete (killed while being written); moved to %s", path, incomplete)
        os.replace(path, incomplete)
    if newest is None:
        return None
    for rank in range(world_size):
        link = folder / f"latest-rank{rank}.pt"
        if link.is_symlink() and os.readlink(link) == newest.name:
            continue
        log.warning("pointing %s at %s, the newest complete checkpoint", link, newest.name)
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(newest.name, link)
    return newest
