"""Processes a rank spawns end with it, also when the rank is killed.

With a bucket ``save_folder`` Composer's remote uploader starts a ``multiprocessing`` manager by the spawn method: a
server process that runs until it is told to stop. A rank killed by SIGKILL (the OOM killer, a scheduler taking the
node back) never tells it, and the server outlives the run with the rank's resource tracker held open (which would
otherwise remove the rank's shared memory), and with whatever the main script imported (~700 MB if the trainer's
imports were at its top level; ``perceiver_stream.train.cli`` keeps them in ``main()``). The kernel ends a child with
its parent on request (``PR_SET_PDEATHSIG``), but only the child can ask; a spawned child runs its parent's main
script (as ``__mp_main__``: train.py, or the ``perceiver-train`` script) before anything else, and that script's
first import, ``perceiver_stream.train.cli``, asks there.
"""

from __future__ import annotations

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def end_with_parent_if_spawned() -> None:
    """In a process ``multiprocessing`` spawned (one that runs or ran its parent's main script as ``__mp_main__``),
    have the kernel SIGKILL it when the thread that started it ends (Linux; elsewhere nothing changes). Composer
    starts its manager and upload workers from the rank's main thread, which ends only with the rank."""
    if "__mp_main__" not in sys.modules or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
