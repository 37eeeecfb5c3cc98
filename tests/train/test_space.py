"""A disk that fills during a checkpoint save (perceiver_stream/train/space.py): one line naming the folder, the bytes
a checkpoint needs and the bytes free, exit status 2, no truncated file under a checkpoint's name, the previous
checkpoint intact and resumed by autoresume. Injected into Composer's checkpoint writer (any user), and on a small
tmpfs (root)."""

from __future__ import annotations

import contextlib
import errno
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from perceiver_stream.train.resume import is_complete
from tests.conftest import is_root, requires
from tests.train.conftest import TINY, tiny_overrides
from tests.train.forked import train

SAVE_FILLS_DISK = 2  # the save that meets the full disk: the checkpoint of batch 4


class _FillingFile:
    """A checkpoint file on a disk that fills after ``room`` bytes: the write that passes it fails as the kernel's
    would, with ENOSPC, after the bytes that fit."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            self.file.write(data[:self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name: str):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def train_on_a_disk_that_fills(argv: list[str]) -> None:
    """train.py's main, with the second checkpoint file Composer opens failing half-way (``tests.train.forked``
    entry)."""
    import builtins

    import composer.utils.checkpoint as composer_checkpoint

    from train import main

    opened = []

    def open_checkpoint(file, mode="r", *args, **kwargs):
        handle = builtins.open(file, mode, *args, **kwargs)
        if "w" in mode and str(file).endswith("-rank0.pt"):
            opened.append(file)
            if len(opened) == SAVE_FILLS_DISK:
                previous = Path(opened[0]).stat().st_size
                return _FillingFile(handle, previous // 2)
        return handle

    composer_checkpoint.open = open_checkpoint  # the name Composer's writer calls
    main(argv)


def overrides(shards: Path, tmp_path: Path, folder: Path) -> list[str]:
    return tiny_overrides(shards, tmp_path, **{
        "save_folder": folder, "save_interval": "2ba", "autoresume": "true", "max_duration": "6ba",
        "eval_interval": "100ba", "data.num_workers": 0, "global_train_batch_size": 8,
        "device_train_microbatch_size": 8})


MESSAGE = re.compile(r"train\.py: error: the disk of save_folder (?P<folder>\S+) is full: a checkpoint needs about "
                     r"(?P<needed>[\d,]+) bytes and (?P<free>[\d,]+) are free \(the partial ep0-ba4-rank0\.pt "
                     r"removed\); ep0-ba2-rank0\.pt is intact, and autoresume=true resumes from it; free space or "
                     r"choose another save_folder, then relaunch")


def test_a_save_that_fills_the_disk_is_one_line_and_the_previous_checkpoint_resumes(tiny_shards, tmp_path):
    folder = tmp_path / "ckpt"
    argv = [TINY, *overrides(tiny_shards, tmp_path, folder)]
    failed = train(argv, entry="tests.train.test_space:train_on_a_disk_that_fills")
    assert failed.returncode == 2, failed.stderr[-3000:]
    match = MESSAGE.fullmatch(failed.stderr.strip().splitlines()[-1])
    assert match, failed.stderr[-2000:]
    previous = folder / "ep0-ba2-rank0.pt"
    assert match["folder"] == str(folder) and int(match["needed"].replace(",", "")) == previous.stat().st_size
    assert sorted(p.name for p in folder.glob("ep*")) == ["ep0-ba2-rank0.pt", "ep0-ba2-rank0.pt.xxh64"]
    assert is_complete(previous) and (folder / "latest-rank0.pt").resolve() == previous

    kept = previous.read_bytes()
    resumed = train(argv)  # the disk has room again: autoresume continues from batch 2 (a fresh run would rewrite it)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert previous.read_bytes() == kept
    state = torch.load(folder / "ep0-ba4-rank0.pt", map_location="cpu", weights_only=False)["state"]
    assert state["timestamp"]["Timestamp"]["batch"] == 4 and is_complete(folder / "ep0-ba6-rank0.pt")


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.slow
def test_a_small_tmpfs_save_folder_warns_then_fails_in_one_line_each_time(tiny_shards, tmp_path):
    requires(is_root() and shutil.which("mount") is not None, "needs root to mount a small tmpfs")
    with tmpfs(tmp_path / "small", "50m") as folder:  # room for one of mlm_tiny's 34 MB checkpoints
        argv = [TINY, *overrides(tiny_shards, tmp_path, folder)]
        for _ in range(2):  # the relaunch resumes from the same checkpoint and meets the same full disk
            failed = train(argv)
            assert failed.returncode == 2, failed.stderr[-3000:]
            assert MESSAGE.fullmatch(failed.stderr.strip().splitlines()[-1]), failed.stderr[-2000:]
            assert "less than two checkpoints" in failed.stderr
            assert sorted(p.name for p in folder.glob("ep*")) == ["ep0-ba2-rank0.pt", "ep0-ba2-rank0.pt.xxh64"]
            assert is_complete(folder / "ep0-ba2-rank0.pt")
