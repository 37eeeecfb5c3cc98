"""The output directory of a conversion: checked before any work, written under a temporary name, renamed into
place only when complete, so an interrupted run never leaves something that looks finished."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import perceiver_stream
from perceiver_stream.convert.input import InputError, Stats
from perceiver_stream.convert.packing import token_dtype
from perceiver_stream.data.format import MANIFEST, MANIFEST_FORMAT, SPLITS
from perceiver_stream.remote import delete, download, is_remote, list_objects, upload


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


def write_manifest(split_dir: Path, *, split: str, tokenizer_info: dict, max_seq_len: int, source: dict,
                   arguments: dict, counts: dict, stats: Stats, documents_converted: int, **extra) -> dict:
    """Write one split's ``manifest.json`` (what the trainer checks shards against: format, tokenizer, sequence
    length) and return it; ``extra`` holds what a kind of conversion adds (a classifier's labels)."""
    manifest = {
        "format": MANIFEST_FORMAT,
        "package_version": perceiver_stream.__version__,
        "split": split,
        "tokenizer": tokenizer_info,
        "max_seq_len": max_seq_len,
        "token_dtype": token_dtype(tokenizer_info["vocab_size"]),
        "source": source,
        "arguments": arguments,
        "counts": counts,
        "source_counts": {"documents_converted": documents_converted, **stats.source_counts()},
        **extra,
    }
    (split_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


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


_REMOTE_OUTPUT = re.compile(r"^(?:[^/]+/)?(?:train|val)/(?:manifest\.json|(?:part-\d+/)?(?:index\.json|shard\.\d+\.mds"
                            r"(?:\.zstd)?))$")


def check_remote_output(remote: str, *, overwrite: bool) -> list[str]:
    """``--remote`` must hold nothing, or with ``overwrite`` only an earlier conversion's objects (each manifest of
    ours); returns those objects' names. Checked before converting, so a refusal costs nothing."""
    if not is_remote(remote):
        raise InputError(f"--remote {remote}: not an object-store URI (s3://bucket/prefix, gs://..., oci://...); "
                         "a local directory is --out")
    existing = list_objects(remote)
    if not existing:
        return []
    if not overwrite:
        raise InputError(f"--remote {remote}: holds {len(existing)} objects already (pass --overwrite to replace an "
                         "earlier conversion)")
    manifests = [name for name in existing if name.endswith(f"/{MANIFEST}")]
    strangers = [name for name in existing if not _REMOTE_OUTPUT.match(name)]
    if strangers or not manifests or not all(_is_our_manifest(f"{remote.rstrip('/')}/{m}") for m in manifests):
        raise InputError(f"--remote {remote}: is not an earlier perceiver-convert output ("
                         + (f"{strangers[0]} is not a file a conversion writes" if strangers else
                            f"no {MANIFEST} of ours") + "), so --overwrite will not replace it")
    return existing


def _is_our_manifest(uri: str) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        download(uri, Path(tmp) / MANIFEST)
        try:
            return json.loads((Path(tmp) / MANIFEST).read_text()).get("format") == MANIFEST_FORMAT
        except (ValueError, AttributeError):
            return False


def upload_output(out: Path, remote: str, previous: list[str]) -> None:
    """Upload a finished conversion at ``out`` to ``remote`` so that a remote with a manifest is complete: an
    earlier conversion's manifests are deleted first, every shard and index is uploaded, the manifests last, then
    what is left of the earlier conversion is deleted. A failure leaves no manifest at ``remote``."""
    base = remote.rstrip("/")
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    for name in previous:
        if name.endswith(f"/{MANIFEST}"):
            delete(f"{base}/{name}")
    for name in sorted(files, key=lambda name: name.endswith(f"/{MANIFEST}")):  # manifests last
        upload(out / name, f"{base}/{name}")
    for name in sorted(set(previous) - set(files)):
        delete(f"{base}/{name}")
    print(f"uploaded {len(files)} files to {base}")
