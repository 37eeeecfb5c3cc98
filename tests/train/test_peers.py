"""What counts as a lost peer: the errors gloo and torch.distributed raise (texts as torch 2.7 raises them), and
nothing else. The real thing, a node killed mid-run, is in test_remote.py."""

from __future__ import annotations

from torch.distributed import DistNetworkError, DistStoreError

from perceiver_stream.train.peers import lost_peer_message


def test_a_dead_or_silent_rank_is_named_in_one_line_and_other_errors_are_not():
    closed = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
                          "[127.0.0.1]:59023")
    silent = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting "
                          "5000ms for recv operation to complete")
    message = lost_peer_message(closed, 60)
    assert message == ("lost contact with another rank of this run (Connection closed by peer [127.0.0.1]:59023; a "
                       "rank silent for dist_timeout=60 s counts as lost): every rank stops; relaunch all nodes with "
                       "autoresume=true to continue from the newest intact checkpoint")
    assert lost_peer_message(silent, 5.0).startswith(
        "lost contact with another rank of this run (Timed out waiting 5000ms for recv operation to complete; a rank "
        "silent for dist_timeout=5 s")
    store = DistStoreError("Timed out after 301 seconds waiting for clients. 1/2 clients joined.\nmore")
    assert "(Timed out after 301 seconds waiting for clients. 1/2 clients joined.; " in lost_peer_message(store, 300)
    assert lost_peer_message(DistNetworkError("Connection reset by peer"), 300) is not None
    for other in (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), ValueError("gloo/transport"),
                  RuntimeError("")):
        assert lost_peer_message(other, 300) is None
