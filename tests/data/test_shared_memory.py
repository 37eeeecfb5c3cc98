"""The shared memory a killed streaming run leaves is removed, that of a run still going is not; jobs starting
together on one node register distinct prefixes."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from streaming import MDSWriter, StreamingDataset

from perceiver_stream.data.shared_memory import (
    REGISTRATION_LOCK,
    SHM_DIR,
    clean_leaked_shared_memory,
    shared_memory_registration,
)
from tests.conftest import is_root, requires

HOLD = """
import sys, time
from streaming.base.shared.memory import SharedMemory
segments = [SharedMemory(f"{int(sys.argv[1]):06d}_{name}", True, 64) for name in ("locals", "barrier")]
print("ready", flush=True)
time.sleep(600)
"""


def hold(prefix: int) -> subprocess.Popen:
    """A process (in its own session, like a launched run) holding two streaming segments of ``prefix``."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(prefix)], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    assert process.stdout.readline() == "ready\n"
    return process


@pytest.mark.skipif(not SHM_DIR.is_dir(), reason="Linux /dev/shm only")
def test_leaked_segments_are_removed_and_live_ones_kept():
    live_prefix = random.Random().randint(900000, 949999)
    leaked_prefix, other = live_prefix + 50000, SHM_DIR / f"{live_prefix + 1:06d}_not_streaming"
    live, killed = hold(live_prefix), hold(leaked_prefix)
    other.write_bytes(b"x")
    live_lock, leaked_lock = (Path(tempfile.gettempdir()) / f"{prefix:06d}_cache_filelock"
                              for prefix in (live_prefix, leaked_prefix))
    live_lock.touch()
    leaked_lock.touch()
    try:
        os.killpg(killed.pid, signal.SIGKILL)  # its resource tracker too, as a job scheduler's kill does
        killed.wait()
        leaked = [SHM_DIR / f"{leaked_prefix:06d}_{n}" for n in ("locals", "barrier")]
        assert all(path.exists() for path in leaked)
        assert clean_leaked_shared_memory() >= 2
        assert not any(path.exists() for path in leaked)
        assert not leaked_lock.exists()  # streaming's file lock of the same prefix
        assert all((SHM_DIR / f"{live_prefix:06d}_{n}").exists() for n in ("locals", "barrier"))
        assert live_lock.exists()
        assert other.exists()  # not a streaming segment
    finally:
        os.killpg(live.pid, signal.SIGKILL)
        live.wait()
        other.unlink()
        live_lock.unlink()
        leaked_lock.unlink(missing_ok=True)
        for path in Path(SHM_DIR).glob(f"{live_prefix:06d}_*"):
            path.unlink()


def _register(local: str, start, gate, prefixes) -> None:
    import streaming.base.dataset as streaming_dataset

    walk = streaming_dataset.get_shm_prefix

    def gated(*args, **kwargs):
        # Every contender starts streaming's prefix walk at the same moment, unless the registration lock keeps them
        # apart: then the first waits the timeout out alone and the broken gate lets the others straight through.
        with contextlib.suppress(threading.BrokenBarrierError):
            gate.wait(timeout=1.0)
        return walk(*args, **kwargs)

    streaming_dataset.get_shm_prefix = gated
    start.wait()
    try:
        with shared_memory_registration():
            dataset = StreamingDataset(local=local, shuffle=False, batch_size=1)
        prefixes.put(dataset._shm_prefix_int)
        start.wait()  # every dataset alive until all are built, as in jobs running side by side
    except Exception as e:
        prefixes.put(repr(e))
        start.abort()


@pytest.mark.skipif(not SHM_DIR.is_dir(), reason="Linux /dev/shm only")
def test_jobs_starting_together_register_distinct_prefixes(tmp_path):
    """8 datasets whose prefix walks start at the same moment (a gate right before streaming's walk): without the
    registration lock several pick the same first unused prefix and die (``FileExistsError: '/000012_locals'``), in
    the first round of each of 3 tries with the lock taken out."""
    with MDSWriter(out=str(tmp_path), columns={"x": "ndarray:int32"}) as writer:
        for i in range(8):
            writer.write({"x": np.arange(i, i + 4, dtype=np.int32)})
    context, jobs = multiprocessing.get_context("fork"), 8
    for _ in range(3):
        start, gate, prefixes = context.Barrier(jobs), context.Barrier(jobs), context.Queue()
        processes = [context.Process(target=_register, args=(str(tmp_path), start, gate, prefixes))
                     for _ in range(jobs)]
        for process in processes:
            process.start()
        results = [prefixes.get(timeout=120) for _ in range(jobs)]
        for process in processes:
            process.join()
        assert all(isinstance(r, int) for r in results), results
        assert len(set(results)) == jobs, results


def _register_as_nobody(tmp: str) -> None:
    os.setgid(65534)
    os.setuid(65534)
    tempfile.tempdir = tmp
    try:
        with shared_memory_registration():
            pass
    except Exception as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        os._exit(1)
    os._exit(0)


def test_another_users_lock_file_is_used_not_refused():
    """A job of a second user on the node waits on the same lock instead of failing on the first user's file."""
    requires(is_root(), "needs root to act as another user")
    with tempfile.TemporaryDirectory() as tmp:  # pytest's own is private to this user
        Path(tmp).chmod(0o755)
        (Path(tmp) / REGISTRATION_LOCK).touch(mode=0o644)  # root's, as the first job of a node leaves it
        child = multiprocessing.get_context("fork").Process(target=_register_as_nobody, args=(tmp,))
        child.start()
        child.join(timeout=60)
        assert child.exitcode == 0
