"""How a rank reports that another rank of its run is gone.

A rank that dies (a node lost, a process killed) closes its connections: the others' next collective fails at once
on gloo ("Connection closed by peer"); a rank that stops answering without closing them is given up after
``dist_timeout`` seconds (the process-group timeout; torch's default is 30 minutes). Either way the run cannot go
on: every rank stops with one line, and relaunching every node with ``autoresume`` continues from the newest intact
checkpoint."""

from __future__ import annotations

import re

from torch.distributed import DistError

from perceiver_stream.errors import first_line

_SOURCE_LOCATION = re.compile(r"^\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*")  # gloo's "[/pytorch/.../pair.cc:534] "


def lost_peer_message(error: BaseException, dist_timeout: float) -> str | None:
    """One line for a collective or rendezvous that failed because a peer is gone or silent; None for any other
    error. Gloo raises a plain RuntimeError whose text comes from its transport; NCCL and the rendezvous store
    raise torch's ``DistError`` subclasses."""
    text = first_line(error)
    if not (isinstance(error, DistError) or (isinstance(error, RuntimeError) and "gloo/transport" in text)):
        return None
    return (f"lost contact with another rank of this run ({_SOURCE_LOCATION.sub('', text)}; a rank silent for "
            f"dist_timeout={dist_timeout:g} s counts as lost): every rank stops; relaunch all nodes with "
            f"autoresume=true to continue from the newest intact checkpoint")
