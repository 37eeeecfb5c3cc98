"""Shards on a read-only filesystem (a shared dataset volume mounted read-only, or a directory without write
permission): compressed ones are read through ``data.cache_dir`` with the same samples and masks as a writable copy,
decompressed ones in place, and nothing is written where it cannot be. The read-only bind mount needs root; a
directory without write permission is read-only for any other user. A run training from such a volume:
tests/train/test_train.py."""

from __future__ import annotations

import contextlib
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import torch

from perceiver_stream.data import build_dataloader, prepare
from tests.conftest import is_root, requires
from tests.data.test_dataset import config


def compressed_copy(shards: Path, to: Path) -> Path:
    """The shards as a conversion leaves them: compressed, without the decompressed copies training adds."""
    shutil.copytree(shards, to)
    for raw in to.rglob("shard.*.mds"):
        raw.unlink()
    return to


def files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


@contextlib.contextmanager
def read_only(folder: Path, how: str):
    """``folder`` read-only: remounted read-only on itself (root), or without write permission."""
    if how == "bind mount":
        subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
            yield folder
        finally:
            subprocess.run(["umount", str(folder)], check=True)
    else:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
        for path, mode in modes.items():
            path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        try:
            yield folder
        finally:
            for path, mode in modes.items():
                path.chmod(mode)


def batches(folder: Path, cache: Path, count: int = 3) -> list[dict[str, torch.Tensor]]:
    cfg = config(streams={"wikipedia": {"local": str(folder)}}, cache_dir=str(cache))
    loader = build_dataloader(cfg, prepare(cfg, ("train",)), "train", batch_size=16, seed=3)
    taken = []
    for batch in loader:
        taken.append(batch)
        if len(taken) == count:
            return taken
    return taken


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        for key in ("input_ids", "labels", "sample_idx"):
            assert torch.equal(x[key], y[key]), key


@pytest.mark.parametrize("how", ["bind mount", "no write permission"])
def test_compressed_shards_on_a_read_only_filesystem_are_read_through_the_cache(xlnet_shards, tmp_path, how):
    """Without write permission root still writes, so for root that case is a writable directory: decompressed in
    place, as it should be."""
    if how == "bind mount":
        requires(is_root(), "needs root to mount a directory read-only")
    writable = compressed_copy(xlnet_shards, tmp_path / "writable")
    expected = batches(writable, tmp_path / "unused-cache")
    assert not (tmp_path / "unused-cache").exists()  # a writable directory is decompressed in place
    volume = compressed_copy(xlnet_shards, tmp_path / "volume")
    before = files(volume)
    with read_only(volume, how):
        got = batches(volume, tmp_path / "cache")
        written = files(volume) != before
    assert_same(got, expected)
    decompressed = list((tmp_path / "cache").rglob("shard.*.mds"))
    if how == "no write permission" and is_root():
        assert written and not decompressed
    else:
        assert not written and decompressed
        assert all(p.relative_to(tmp_path / "cache").parts[0].startswith("wikipedia-") for p in decompressed)


def test_decompressed_shards_on_a_read_only_filesystem_are_read_in_place(xlnet_shards, tmp_path):
    requires(is_root(), "needs root to mount a directory read-only")
    writable = compressed_copy(xlnet_shards, tmp_path / "writable")
    expected = batches(writable, tmp_path / "unused")  # decompresses beside the compressed shards
    volume = tmp_path / "volume"
    shutil.copytree(writable, volume)
    with read_only(volume, "bind mount"):
        assert_same(batches(volume, tmp_path / "cache"), expected)
    assert not (tmp_path / "cache").exists()  # no copy
