"""Streaming's shared memory on a node shared by several jobs: registering it safely, removing what runs leave.

A streaming dataset keeps its state in shared memory segments named ``{prefix:06d}_{name}`` and file locks named
``{prefix:06d}_{barrier,cache}_filelock`` in the temporary directory. Three problems, one module:

- Registration races. Every rank walks the prefixes to the first unused one, then the local leader creates it:
  two jobs that start together on one node pick the same prefix and one dies with ``FileExistsError:
  '/000012_locals'``. :func:`shared_memory_registration` makes each job's local leader hold a node-wide lock for
  its whole registration.
- streaming's ``clean_stale_shared_memory`` unlinks every prefix's segments from 0 up to the first unused prefix:
  the segments of a run still training on the same node too (its loader workers then fail to attach), and nothing
  past a gap, so leaks pile up. Here a prefix is stale when no process maps any of its segments
  (``/proc/*/maps``): live runs keep theirs mapped for as long as their dataset exists.
- streaming never removes its file locks, and the walk skips every prefix that has one, so each run on a node
  starts further up (prefix 1,300 after a few hundred runs here) and the temporary directory fills with them.
  The file locks of stale prefixes go with their segments.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from tempfile import gettempdir

import torch.distributed as dist
from streaming.base.constant import BARRIER_FILELOCK, CACHE_FILELOCK, SHM_TO_CLEAN
from streaming.base.util import clean_stale_shared_memory
from streaming.base.world import World

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
_SEGMENT = re.compile(rf"(\d{{6}})_({'|'.join(map(re.escape, SHM_TO_CLEAN))})")
_FILELOCK = re.compile(rf"(\d{{6}})_({BARRIER_FILELOCK}|{CACHE_FILELOCK})")
REGISTRATION_LOCK = "perceiver-stream-shm.lock"


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


def _ours(folder: Path, pattern: re.Pattern) -> dict[str, list[Path]]:
    """This user's files in ``folder`` whose names match ``pattern``, by prefix."""
    prefixes: dict[str, list[Path]] = defaultdict(list)
    uid = os.getuid()
    for path in folder.iterdir():
        if (match := pattern.fullmatch(path.name)) is not None:
            try:
                if path.stat().st_uid == uid:
                    prefixes[match.group(1)].append(path)
            except FileNotFoundError:
                continue
    return prefixes


def clean_leaked_shared_memory() -> int:
    """Unlink the streaming segments and file locks of every prefix that no process maps; returns how many files
    were removed.

    Where there is no /proc or /dev/shm (not Linux), falls back to streaming's cleaner.
    """
    if not (SHM_DIR.is_dir() and Path("/proc/self/maps").exists()):
        clean_stale_shared_memory()
        return 0
    prefixes = _ours(SHM_DIR, _SEGMENT)
    for prefix, paths in _ours(Path(gettempdir()), _FILELOCK).items():
        prefixes[prefix].extend(paths)
    live = {name.split("_", 1)[0] for name in mapped_segments()}
    removed = 0
    for prefix, paths in prefixes.items():
        if prefix in live:
            continue
        for path in paths:
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:  # removed meanwhile by the ended run's resource tracker or a cleaner
                pass
    if removed:
        log.info("removed %d shared memory segment(s) and file lock(s) that ended streaming runs left in %s and %s",
                 removed, SHM_DIR, gettempdir())
    return removed


@contextmanager
def shared_memory_registration() -> Iterator[None]:
    """Build streaming datasets inside this: the job's local leader holds the node's registration lock (and
    removes what ended runs left) while every local rank picks the prefix and the leader creates it.

    With more than one rank, torch.distributed must be initialized first: the other ranks wait at a barrier until
    their leader holds the lock, so no other job can create a prefix between their walk and their leader's.
    """
    if World.detect().is_local_leader:
        lock = _open_lock(Path(gettempdir()) / REGISTRATION_LOCK)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the descriptor closes
            clean_leaked_shared_memory()
            _barrier()
            yield
        finally:
            os.close(lock)
    else:
        _barrier()
        yield


def _open_lock(path: Path) -> int:
    """A read-only descriptor of the lock file, creating it if need be. Read-only because the file may be another
    user's (streaming's prefixes are shared by all users of a node) and flock needs no write access; created
    exclusively because in a sticky /tmp (``fs.protected_regular``) even root cannot open another user's file
    with O_CREAT."""
    while True:
        try:
            return os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            pass
        try:
            return os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # another job created it in between
            continue


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
