"""Removing the shared memory that killed runs leave behind, and only that.

A streaming dataset keeps its state in shared memory segments named ``{prefix:06d}_{name}``; a run killed with
SIGKILL leaves them behind. streaming's ``clean_stale_shared_memory`` unlinks every prefix's segments from 0 up to
the first unused prefix: the segments of a run still training on the same node too (its loader workers then fail
to attach), and nothing past a gap, so leaks pile up. Here a prefix is stale when no process maps any of its
segments (``/proc/*/maps``): live runs keep theirs mapped for as long as their dataset exists.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from pathlib import Path

from streaming.base.constant import SHM_TO_CLEAN
from streaming.base.util import clean_stale_shared_memory

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
_SEGMENT = re.compile(rf"(\d{{6}})_({'|'.join(map(re.escape, SHM_TO_CLEAN))})")


def mapped_segments(proc: Path = Path("/proc")) -> set[str]:
    """Names of the /dev/shm files some process maps (processes whose maps cannot be read are skipped: their
    segments belong to another user, whose files we could not unlink anyway)."""
    names = set()
    for maps in proc.glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:  # the process ended, or is not ours
            continue
        for line in text.splitlines():
            if f" {SHM_DIR}/" in line:
                names.add(line.split(f" {SHM_DIR}/", 1)[1].removesuffix(" (deleted)"))
    return names


def clean_leaked_shared_memory() -> int:
    """Unlink the streaming segments of every prefix that no process maps; returns how many were removed.

    Where there is no /proc or /dev/shm (not Linux), falls back to streaming's cleaner.
    """
    if not (SHM_DIR.is_dir() and Path("/proc/self/maps").exists()):
        clean_stale_shared_memory()
        return 0
    prefixes: dict[str, list[Path]] = defaultdict(list)
    uid = os.getuid()
    for path in SHM_DIR.iterdir():
        if (match := _SEGMENT.fullmatch(path.name)) is not None:
            try:
                if path.stat().st_uid == uid:
                    prefixes[match.group(1)].append(path)
            except FileNotFoundError:
                continue
    live = {name.split("_", 1)[0] for name in mapped_segments()}
    removed = 0
    for prefix, paths in prefixes.items():
        if prefix in live:
            continue
        for path in paths:
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:  # another rank of this node removed it first
                pass
    if removed:
        log.info("removed %d shared memory segment(s) that killed streaming runs left in %s", removed, SHM_DIR)
    return removed
