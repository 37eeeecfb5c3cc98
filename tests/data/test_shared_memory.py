"""The shared memory a killed streaming run leaves is removed; that of a run still going is not."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from perceiver_stream.data.shared_memory import SHM_DIR, clean_leaked_shared_memory

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
    try:
        os.killpg(killed.pid, signal.SIGKILL)  # its resource tracker too, as a job scheduler's kill does
        killed.wait()
        leaked = [SHM_DIR / f"{leaked_prefix:06d}_{n}" for n in ("locals", "barrier")]
        assert all(path.exists() for path in leaked)
        assert clean_leaked_shared_memory() >= 2
        assert not any(path.exists() for path in leaked)
        assert all((SHM_DIR / f"{live_prefix:06d}_{n}").exists() for n in ("locals", "barrier"))
        assert other.exists()  # not a streaming segment
    finally:
        os.killpg(live.pid, signal.SIGKILL)
        live.wait()
        other.unlink()
        for path in Path(SHM_DIR).glob(f"{live_prefix:06d}_*"):
            path.unlink()
