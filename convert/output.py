"""The output directory of a conversion: checked before any work, written under a temporary name, renamed into
place only when complete, so an interrupted run never leaves something that looks finished."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from convert.input import InputError
from perceiver_stream.data.format import MANIFEST, MANIFEST_FORMAT, SPLITS


def check_output(out: Path, *, overwrite: bool, input_files: Iterable[str]) -> None:
    """``out`` must be absent or empty, or with ``overwrite`` an earlier conversion's output (``check_replaceable``)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file, not a directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise InputError(f"--out {out}: exists and is not empty (pass --overwrite to replace it)")
        check_replaceable(out, input_files)


@contextmanager
def written_atomically(out: Path) -> Iterator[Path]:
    """Yields ``.<out>.partial`` to write into; renamed to ``out`` (replacing an earlier output) when the block
    ends, removed when it raises (an error, Ctrl-C, SIGTERM)."""
    partial = out.parent / f".{out.name}.partial"
    if partial.exists():
        print(f"removing the unfinished output of an interrupted run: {partial}")
        shutil.rmtree(partial)
    try:
        partial.mkdir(parents=True)
    except OSError as e:
        raise InputError(f"--out {out}: cannot write there ({e.strerror}); choose a writable directory") from None
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # nothing half-written stays behind
        raise
    if out.exists():
        trash = out.parent / f".{out.name}.replaced"
        os.replace(out, trash)
        os.replace(partial, out)
        shutil.rmtree(trash)
    else:
        os.replace(partial, out)


def _output_layout(out: Path) -> list[Path]:
    """The manifests of an earlier output at ``out`` (``train``/``val`` splits, directly or one stream deep), or
    an empty list if ``out`` holds anything a conversion does not write."""
    def written(path: Path) -> bool:  # what the writer (and streaming's decompression) puts in a split
        if path.is_dir():
            return path.name.startswith("part-") and all(written(f) for f in path.iterdir())
        return path.name in (MANIFEST, "index.json") or path.name.startswith("shard.")

    def split_files_ok(split: Path) -> bool:
        return split.is_dir() and all(written(f) for f in split.iterdir())

    manifests = []
    for entry in out.iterdir():
        if entry.name in SPLITS and split_files_ok(entry):
            manifests.append(entry / MANIFEST)
        elif entry.is_dir() and any(entry.iterdir()) and all(
                e.name in SPLITS and split_files_ok(e) for e in entry.iterdir()):
            manifests += [e / MANIFEST for e in entry.iterdir()]
        else:
            return []
    return manifests


def check_replaceable(out: Path, input_files: Iterable[str]) -> None:
    """``--overwrite`` replaces only an earlier ``perceiver-convert`` output, proven by its manifests, and never
    a directory that holds one of this run's inputs."""
    resolved = out.resolve()
    for file in input_files:
        if resolved in Path(file).resolve().parents:
            raise InputError(f"--out {out}: holds the input {file}; --overwrite would delete it. Choose another --out")
    manifests = _output_layout(out)

    def is_manifest(path: Path) -> bool:
        try:
            return json.loads(path.read_text()).get("format") == MANIFEST_FORMAT
        except (OSError, ValueError, AttributeError):
            return False

    if not manifests or not all(is_manifest(m) for m in manifests):
        raise InputError(f"--out {out}: is not an earlier perceiver-convert output (train/ and val/ with their "
                         f"{MANIFEST}, and nothing else), so --overwrite will not replace it. Choose another --out, "
                         "or remove it yourself")
