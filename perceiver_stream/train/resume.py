"""Make autoresume survive a kill at any moment, including while a checkpoint is being written.

Composer writes ``ep{e}-ba{b}-rank{r}.pt`` in place, then removes and recreates the ``latest-rank{r}.pt``
symlink. A kill during the write leaves a truncated newest file; a kill between removing and recreating the
link leaves no ``latest`` at all, and autoresume would silently start from scratch. Before the Trainer
starts, ``repair_latest`` points every ``latest`` link at the newest *complete* checkpoint and moves
incomplete ones aside (renamed ``*.incomplete``, never deleted).

A complete file can still hold corrupted bytes (a disk or copy error), which load without complaint and train
into NaN. So once a checkpoint is written, ``write_digests`` records its xxh64 in ``<checkpoint>.xxh64``; a
checkpoint whose bytes no longer match is moved aside as ``*.corrupt`` and the previous one resumed instead. A
checkpoint the run stopped before recording a digest for is verified by its zip members' CRC-32 (a sharded one,
which has none, is not trusted).
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from pathlib import Path

import torch
import xxhash

from perceiver_stream.digest import update_with_file
from perceiver_stream.model.config import RUNTIME_KEYS, differing_settings

log = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^ep(\d+)-ba(\d+)(-rank0\.pt)?$")


def is_complete(path: Path) -> bool:
    """A ``torch.save`` file is a zip whose central directory is written last; a sharded (DCP) checkpoint
    directory gets its ``.metadata`` last."""
    if path.is_dir():
        return (path / ".metadata").exists()
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _digest(path: Path) -> str:
    """xxh64 of a checkpoint file, or of a sharded checkpoint directory's files in name order."""
    digest = xxhash.xxh64()
    for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if file.is_file():
            digest.update(file.name.encode())
            update_with_file(digest, file)
    return digest.hexdigest()


def _digest_file(path: Path) -> Path:
    return path.with_name(path.name + ".xxh64")


def checkpoints(folder: Path) -> list[Path]:
    """The folder's checkpoints (not the ``latest`` links), newest first."""
    found = []
    for path in folder.iterdir():
        match = _CHECKPOINT.match(path.name)
        if match and not path.is_symlink():
            found.append(((int(match.group(1)), int(match.group(2))), path))
    return [path for _, path in sorted(found, reverse=True)]


def write_digests(save_folder: str | Path) -> None:
    """Record the digest of every complete checkpoint that has none yet (called after each save), and drop the
    digests of checkpoints Composer has rotated away."""
    folder = Path(save_folder)
    if not folder.is_dir():
        return
    found = checkpoints(folder)
    for path in found:
        if not _digest_file(path).exists() and is_complete(path):
            partial = path.with_name(path.name + ".xxh64.partial")
            partial.write_text(_digest(path) + "\n")
            os.replace(partial, _digest_file(path))
    kept = {_digest_file(p).name for p in found}
    for stale in folder.glob("*.xxh64"):
        if stale.name not in kept:
            stale.unlink()


def is_intact(path: Path) -> bool:
    """Whether a checkpoint's bytes match its recorded digest. One without a digest (the run stopped between writing
    it and recording its digest) is checked against the CRC-32 every member of a ``torch.save`` zip carries; a
    sharded checkpoint carries none, so without a digest it is not trusted."""
    record = _digest_file(path)
    if record.exists():
        return record.read_text().strip() == _digest(path)
    if path.is_dir():
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError):
        return False


def repair_latest(save_folder: str | Path, world_size: int = 1) -> Path | None:
    """Point ``latest-rank{r}.pt`` (r < world_size) at the newest complete checkpoint in ``save_folder``.

    Returns that checkpoint, or None when there is none (a fresh run). Only local folders are repaired.
    """
    folder = Path(save_folder)
    if not folder.is_dir():
        return None
    newest = None
    for path in checkpoints(folder):
        if not is_complete(path):
            incomplete = path.with_name(path.name + ".incomplete")
            log.warning("checkpoint %s is incomplete (killed while being written); moved to %s", path, incomplete)
            os.replace(path, incomplete)
        elif not is_intact(path):
            corrupt = path.with_name(path.name + ".corrupt")
            if _digest_file(path).exists():
                log.warning("checkpoint %s does not match the digest recorded when it was written (its bytes changed "
                            "since); moved to %s, resuming from the previous checkpoint", path, corrupt)
                os.replace(_digest_file(path), _digest_file(corrupt))
            else:
                log.warning("checkpoint %s has no digest (the run stopped before recording it) and %s; moved to %s, "
                            "resuming from the previous checkpoint", path,
                            "a sharded checkpoint cannot be verified without one" if path.is_dir() else
                            "its CRC-32 check fails (its bytes changed since it was written)", corrupt)
            os.replace(path, corrupt)
        else:
            newest = path
            break
    if newest is None:
        return None
    for rank in range(world_size):
        link = folder / f"latest-rank{rank}.pt"
        if link.is_symlink() and os.readlink(link) == newest.name:
            continue
        log.warning("pointing %s at %s, the newest complete checkpoint", link, newest.name)
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(newest.name, link)
    return newest


def fetch_checkpoint(folder: str, name: str, local: Path, listed: set[str]) -> Path:
    """``folder/name`` from object storage into ``local`` (unless it is there already), with the digest the run
    uploaded beside it when ``listed`` (the folder's objects) holds one, ready for ``is_intact``."""
    from perceiver_stream.remote import download

    path = local / name
    if not path.exists():
        download(f"{folder}/{name}", path)
    if f"{name}.xxh64" in listed and not _digest_file(path).exists():
        download(f"{folder}/{name}.xxh64", _digest_file(path))
    return path


def fetch_newest_intact(remote: str, local: Path) -> Path | None:
    """For a ``save_folder`` in object storage: download into ``local`` the newest checkpoint there whose bytes are
    intact (``is_intact``, against the digest uploaded beside it); the trainer loads it as its ``load_path``. One
    process of the run decides (the others fetch its choice, ``fetch_intact``): two nodes checking the bucket at
    once would both rename a corrupted object, or one would download what the other is renaming.

    An object that is not intact is renamed ``*.corrupt`` in the bucket with a warning naming it (as locally: the
    run saves that checkpoint again, and Composer does not overwrite an object), and the previous one is tried.
    A sharded checkpoint (a directory of objects) is not handled here. Returns the checkpoint, or None.
    """
    from perceiver_stream.remote import list_objects, move

    base = remote.rstrip("/")
    names = set(list_objects(base))
    found = [((int(m.group(1)), int(m.group(2))), name) for name in names
             if (m := _CHECKPOINT.match(name)) and m.group(3)]
    for _, name in sorted(found, reverse=True):
        path = fetch_checkpoint(base, name, local, names)
        if is_intact(path):
            return path
        log.warning("checkpoint %s/%s %s; renamed %s/%s.corrupt, resuming from the previous checkpoint", base, name,
                    "does not match the digest recorded when it was written" if _digest_file(path).exists() else
                    "has no digest and its CRC-32 check fails", base, name)
        move(f"{base}/{name}", f"{base}/{name}.corrupt")
        path.unlink()
        _digest_file(path).unlink(missing_ok=True)
    return None


def fetch_intact(remote: str, name: str, local: Path) -> Path:
    """``remote/name`` (the checkpoint another process chose with ``fetch_newest_intact``) into ``local``, checked."""
    from perceiver_stream.checkpoint import CheckpointError
    from perceiver_stream.remote import list_objects

    base = remote.rstrip("/")
    path = fetch_checkpoint(base, name, local, set(list_objects(base)))
    if not is_intact(path):
        raise CheckpointError(f"checkpoint {base}/{name} arrived here with other bytes than where it was checked; "
                              "relaunch to resume again")
    return path


# model.* settings a resumed run may change: they do not shape the weights or what they compute.
FREE_MODEL_KEYS = (*RUNTIME_KEYS, "decoder.dropout", "encoder_from", "freeze_encoder")


def recorded_model_settings(checkpoint: Path) -> dict | None:
    """The ``model:`` section a checkpoint records (None for one that records none). A ``.pt`` file is memory-mapped,
    so only the small pickled part is read; a sharded checkpoint is gathered (``read_checkpoint``)."""
    from perceiver_stream.checkpoint import read_checkpoint, recorded_run

    if checkpoint.is_dir():
        state = read_checkpoint(checkpoint)
    else:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)["state"]
    config = recorded_run(state).config
    return None if config is None else config.get("model")


def check_model_settings(checkpoint: Path, model: dict) -> None:
    """Refuse to resume ``checkpoint`` with ``model:`` settings that shape the weights differently: Composer would
    stop inside its loader with a multi-line size mismatch."""
    recorded = recorded_model_settings(checkpoint)
    if recorded is None:
        return
    differ = [f"model.{key}={found!r}, this run has {now!r}"
              for key, found, now in differing_settings(recorded, model, ignore=FREE_MODEL_KEYS)]
    if differ:
        from perceiver_stream.config import ConfigError

        raise ConfigError(f"autoresume: checkpoint {checkpoint.name} was trained with " + "; ".join(differ) +
                          "; start a new run_name (or save_folder) or restore the settings")
