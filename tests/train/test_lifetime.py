"""A process a rank spawns ends with the rank when the rank is killed (SIGKILL), as Composer's remote uploader's
manager does not on its own (shown here too). The whole run, a node killed with a bucket save_folder, is in
test_remote.py."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("asks", [True, False])
def test_a_spawned_manager_ends_with_its_killed_parent_when_it_asks(tmp_path, asks):
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(f"""
        import multiprocessing, os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from perceiver_stream.train.lifetime import end_with_parent_if_spawned
        if {asks}:
            end_with_parent_if_spawned()  # as perceiver_stream.train.cli does
        if __name__ == "__main__":
            manager = multiprocessing.get_context("spawn").Manager()  # as composer.utils.RemoteUploader starts one
            event = manager.Event()
            print(manager._process.pid, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """))
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "w") as stdout, open(err, "w") as stderr:  # files: a surviving manager would hold a pipe open
        code = subprocess.run([sys.executable, str(script)], stdout=stdout, stderr=stderr, timeout=120).returncode
    assert code == -signal.SIGKILL, err.read_text()[-3000:]
    manager = int(out.read_text().split()[0])
    deadline = time.monotonic() + 10
    while alive(manager) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        assert alive(manager) is not asks
    finally:
        if alive(manager):
            psutil.Process(manager).kill()


@pytest.mark.parametrize("entry", ["train.py", "perceiver-train"])
def test_the_entry_points_top_level_imports_no_trainer(entry):
    """What a process the rank spawns runs first (the main script as ``__mp_main__``: train.py, or the installed
    ``perceiver-train`` script): the death-signal request and no trainer, so Composer's upload manager starts in a
    fraction of a second instead of importing torch and Composer."""
    script = REPO / "train.py" if entry == "train.py" else Path(sys.executable).parent / entry
    probe = textwrap.dedent(f"""
        import runpy, sys
        runpy.run_path({str(script)!r}, run_name="__mp_main__")
        watched = ("torch", "composer", "streaming", "transformers", "perceiver_stream.train.trainer",
                 "perceiver_stream.train.lifetime")
        print(" ".join(sorted(m for m in watched if m in sys.modules)))
    """)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["perceiver_stream.train.lifetime"]
