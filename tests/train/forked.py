"""`python train.py ...` and `composer -n N train.py ...` for the tests, forked from a server that has imported
the trainer once.

A fresh interpreter spends 7-10 s of CPU importing torch, Composer, streaming and transformers before its first
batch, longer than most test runs train; the suite starts some fifty of them. multiprocessing's fork server
imports ``train`` once per pytest process (before any thread exists, unlike the pytest process itself) and forks
each rank from there: a fresh process in every other respect, with its own environment, process group (so a
test can kill -9 a whole run) and output files. Ranks get the variables Composer's launcher sets; the launcher
itself keeps its own tests (test_resume.py's ``ddp_reference``, which shows that its ranks and forked ranks train
the same, and test_remote.py's two nodes). A rank runs train.py's ``main`` or another ``module:function`` (the
two-rank workers of tests/optim and tests/train).
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from multiprocessing import resource_tracker
from pathlib import Path

from tests.conftest import REPO

PRELOAD = ["train", "perceiver_stream.train.trainer", "perceiver_stream.export", __name__]
_context: mp.context.ForkServerContext | None = None


def _server() -> mp.context.ForkServerContext:
    global _context
    if _context is None:
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        _context = mp.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _rank(argv: list[str], env: dict[str, str], outputs: tuple[str, str], leader: int | None, cwd: str,
          entry: str) -> None:
    """One rank: joins the run's process group, takes ``env``, ``outputs`` (stdout, stderr) and the working
    directory ``cwd``, runs ``entry`` (``module:function``, train.py's main by default) on ``argv`` and exits with
    its status."""
    for _ in range(500):  # rank 0 makes the group; a later rank may get here first (or after it ended)
        try:
            os.setpgid(0, leader or 0)
            break
        except PermissionError:
            time.sleep(0.01)
    # The start method a fresh `python train.py` has on Linux: a child of the fork server would start its loader
    # workers through a fork server of its own, which outlives the run (and holds its memory) when it ends.
    mp.set_start_method("fork", force=True)
    for stream, path in enumerate(outputs, start=1):
        os.dup2(os.open(path, os.O_WRONLY | os.O_APPEND), stream)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    os.environ.clear()
    os.environ.update(env)
    # Its own resource tracker, as a fresh process would have (not the test process's, which would find the
    # run's shared memory already removed when the tests end and warn about each segment).
    resource_tracker._resource_tracker = resource_tracker.ResourceTracker()
    os.chdir(cwd)
    import torch

    torch.set_num_threads(int(env.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    module, function = entry.split(":")
    main = getattr(importlib.import_module(module), function)
    code = 0
    try:
        main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    except BaseException:  # noqa: BLE001 - reported like an uncaught exception in a script
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Run:
    """The ranks of one run, started; ``pid`` is its process group."""

    def __init__(self, argv: list[str], processes: int = 1, env: dict[str, str] | None = None,
                 cwd: Path = REPO, *, entry: str = "train:main"):
        from tests.optim.test_lamb import free_port

        context = _server()
        self.argv = argv
        base = {**os.environ, **(env or {})}
        if processes > 1:
            base.update(WORLD_SIZE=str(processes), LOCAL_WORLD_SIZE=str(processes), NODE_RANK="0",
                        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        self.outputs = []
        self.ranks: list[mp.process.BaseProcess] = []
        for rank in range(processes):
            output = tuple(self._file(f"train-rank{rank}-", suffix) for suffix in (".out", ".err"))
            rank_env = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank)} if processes > 1 else base
            leader = self.ranks[0].pid if self.ranks else None
            process = context.Process(target=_rank, args=(argv, rank_env, output, leader, str(cwd), entry))
            process.start()
            self.outputs.append(output)
            self.ranks.append(process)
        self.pid = self.ranks[0].pid

    @staticmethod
    def _file(prefix: str, suffix: str) -> str:
        fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix)
        os.close(fd)
        return path

    def poll(self) -> int | None:
        """None while a rank runs; once one fails, the others are killed (as Composer's launcher does). The
        status is the first rank's that is not 0."""
        codes = [rank.exitcode for rank in self.ranks]
        if None not in codes:
            return next((code for code in codes if code), 0)
        if any(code for code in codes if code is not None):
            self.kill()
        return None

    def kill(self) -> None:
        """SIGKILL the run's process group (its ranks and their loader workers), and any rank outside it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        for rank in self.ranks:
            if rank.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rank.pid, signal.SIGKILL)

    def wait(self, timeout: float = 600) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None:
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"train.py {' '.join(map(str, self.argv))} ran past {timeout} s")
            time.sleep(0.05)
        for rank in self.ranks:
            rank.join()
        return code

    def result(self) -> subprocess.CompletedProcess:
        """The status, and the ranks' stdout and stderr (each the ranks' in rank order)."""
        code = self.wait()
        texts = ["".join(Path(output[stream]).read_text() for output in self.outputs) for stream in (0, 1)]
        for path in (path for output in self.outputs for path in output):
            os.unlink(path)
        return subprocess.CompletedProcess(self.argv, code, stdout=texts[0], stderr=texts[1])


def train(argv: list, processes: int = 1, env: dict[str, str] | None = None, cwd: Path = REPO, *,
          entry: str = "train:main") -> subprocess.CompletedProcess:
    """Run train.py ``argv`` (config and overrides) on ``processes`` ranks to its end, in ``cwd`` (``entry``:
    another ``module:function`` that takes the argv, as a rank would run it)."""
    return Run([str(a) for a in argv], processes, env, cwd, entry=entry).result()
