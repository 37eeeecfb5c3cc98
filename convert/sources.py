"""Documents from raw corpora: local files of several formats (hub datasets: ``perceiver_stream.convert.hub``).

Every reader yields raw documents in a fixed order; what it cannot use it counts in ``Stats.skipped`` with a
reason, so nothing disappears silently. Readers that fail on bad input name the file (and line).
"""

from __future__ import annotations

import bz2
import codecs
import glob
import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import KW_ONLY, dataclass, replace
from pathlib import Path

from perceiver_stream.convert.hub import HubSpec, documents
from perceiver_stream.convert.input import InputError, Stats

MAX_REPLACED_FRACTION = 0.001  # default share of a file's bytes that may be undecodable (not UTF-8)
FORMATS = ("auto", "txt", "jsonl", "parquet", "wikiextractor", "gutenberg", "wikidump")

_WIKIEXTRACTOR_DOC = re.compile(r"<doc\b[^>]*>(.*?)</doc>", re.DOTALL)
_GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF.*$", re.MULTILINE)
# Older eBooks end with "End of the Project Gutenberg Etext ..." or a "SMALL PRINT" licence instead.
_GUTENBERG_END = re.compile(
    r"^(\*\*\*\s*END OF|\*\*\*\s*START\*\*THE SMALL PRINT|End of (the )?Project Gutenberg)",
    re.MULTILINE | re.IGNORECASE,
)


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files named by paths, globs and directories (recursively), sorted; a pattern matching nothing fails."""
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not matches or not all(os.path.exists(m) for m in matches):
            raise InputError(f"--input {pattern}: no such file or directory")
        for match in map(Path, matches):
            if match.is_dir():
                files += sorted(p for p in match.rglob("*") if p.is_file() and not p.name.startswith("."))
            else:
                files.append(match)
    if not files:
        raise InputError(f"--input {' '.join(patterns)}: no files found")
    return files


def decode(data: bytes, stats: Stats, path: Path) -> str:
    """UTF-8 text (a BOM dropped, CRLF/CR made LF); undecodable bytes become U+FFFD and are counted per file."""
    errors = 0

    def count_and_replace(error: UnicodeDecodeError) -> tuple[str, int]:
        nonlocal errors
        errors += error.end - error.start
        return "\ufffd", error.end

    codecs.register_error("perceiver_stream_count", count_and_replace)
    text = data.decode("utf-8-sig", errors="perceiver_stream_count")
    stats.replaced_bytes += errors
    stats.decoded_bytes[str(path)] += len(data)
    if errors:
        stats.replaced_by_file[str(path)] += errors
    return text.replace("\r\n", "\n").replace("\r", "\n")


def is_text(head: bytes) -> bool:
    """Whether a file's first kilobytes look like text: no NUL byte, and at most 1% not UTF-8 (latin-1 prose
    passes; images, archives and other binary files do not)."""
    if b"\0" in head:
        return False
    text = head.decode("utf-8", errors="replace")
    return text.count("\ufffd") <= 0.01 * max(len(head), 1) + 3  # a multi-byte character cut at the end


def sniff_format(path: Path) -> str | None:
    """The format of ``path`` from its name, else from its first kilobytes; None for a file that is not text."""
    name = path.name.lower()
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".xml.bz2", ".xml")):
        return "wikidump"
    with open(path, "rb") as f:
        raw = f.read(1 << 16)
    if not is_text(raw):
        return None
    head = raw.decode("utf-8", errors="replace")
    if head.lstrip("\ufeff").lstrip().startswith("<doc"):
        return "wikiextractor"
    if "*** START OF" in head:
        return "gutenberg"
    return "txt"


def read_txt(path: Path, stats: Stats) -> Iterator[str]:
    """The whole file is one document."""
    yield decode(path.read_bytes(), stats, path)


def read_wikiextractor(path: Path, stats: Stats) -> Iterator[str]:
    """``<doc ...>`` blocks; the body's first line is the title and is dropped; title-only stubs count as skipped."""
    for match in _WIKIEXTRACTOR_DOC.finditer(decode(path.read_bytes(), stats, path)):
        lines = match.group(1).strip().split("\n")
        body = "\n".join(lines[1:]).strip()
        if body:
            yield body
        else:
            stats.skipped["wikiextractor_stub"] += 1


def read_gutenberg(path: Path, stats: Stats) -> Iterator[str]:
    """The text between the ``*** START OF`` and ``*** END OF`` marker lines (licence and header dropped)."""
    text = decode(path.read_bytes(), stats, path)
    start = _GUTENBERG_START.search(text)
    end = _GUTENBERG_END.search(text, start.end()) if start else None
    if start is None or end is None or end.start() < start.end():
        stats.skipped["gutenberg_without_markers"] += 1
        return
    yield text[start.end():end.start()]


def read_jsonl(path: Path, stats: Stats, text_field: str) -> Iterator[str]:
    with open(path, "rb") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(decode(line, stats, path))
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{line_number}: not a JSON object ({e.msg})") from None
            if not isinstance(record, dict) or text_field not in record:
                raise InputError(f"{path}:{line_number}: no --text-field {text_field!r} in this record")
            if not isinstance(record[text_field], str):
                raise InputError(f"{path}:{line_number}: field {text_field!r} is not a string")
            yield record[text_field]


def read_parquet(path: Path, stats: Stats, text_field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a parquet file ({e}); pass the --format of what it holds") from None
    if text_field not in schema.names:
        raise InputError(f"{path}: no --text-field {text_field!r} column (columns: {schema.names})")
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise InputError(f"{path}: column {text_field!r} holds {kind}, not text; pass the --text-field of a "
                         "string column")
    for batch in pq.ParquetFile(path).iter_batches(columns=[text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text is None:
                stats.skipped["null_text"] += 1
            else:
                yield text


class Wikitext(str):
    """An article's raw wikitext. Readers yield it unrendered because rendering costs several times the
    tokenization: a conversion worker renders (``plain_text``) only the articles it converts."""


def plain_text(document: str) -> str:
    """The text of a document a reader yielded: wikitext rendered, anything else as is."""
    return wikitext_to_text(document) if isinstance(document, Wikitext) else document


def read_wikidump(path: Path, stats: Stats) -> Iterator[str]:
    """Articles (namespace 0, not redirects) of a MediaWiki ``pages-articles.xml[.bz2]`` dump, as ``Wikitext``."""
    opener = bz2.open if path.name.endswith(".bz2") else open
    with opener(path, "rb") as f:
        try:
            for _, element in ET.iterparse(f, events=("end",)):
                if not element.tag.endswith("}page") and element.tag != "page":
                    continue
                namespace = _child_text(element, "ns")
                text = _child_text(element, "revision/text") or ""
                redirect = any(child.tag.endswith("redirect") for child in element)
                element.clear()
                if namespace not in (None, "0"):
                    stats.skipped["wikidump_not_article"] += 1
                elif redirect:
                    stats.skipped["wikidump_redirect"] += 1
                else:
                    yield Wikitext(text)
        except ET.ParseError as e:
            raise InputError(f"{path}: not a MediaWiki XML dump ({e})") from None


def _child_text(element: ET.Element, path: str) -> str | None:
    for child in element.iter():
        if child.tag.rsplit("}", 1)[-1] == path.rsplit("/", 1)[-1]:
            return child.text
    return None


def wikitext_to_text(wikitext: str) -> str:
    """Readable text of wikitext: templates, tables, references and files removed, links kept as their text."""
    import mwparserfromhell

    code = mwparserfromhell.parse(wikitext)
    for node in code.filter_tags(recursive=False):
        if str(node.tag).lower() in ("ref", "table", "gallery", "math"):
            code.remove(node)
    text = code.strip_code(normalize=True, collapse=True)
    lines = [line.strip() for line in text.split("\n")]
    lines = [line for line in lines if line and not re.match(r"^(File|Image|Category):", line)]
    return "\n".join(lines)


def read_file(path: Path, fmt: str, stats: Stats, text_field: str) -> Iterator[str]:
    """The documents of one file; with ``--format auto`` a file that is not text is skipped and counted."""
    fmt = sniff_format(path) if fmt == "auto" else fmt
    if fmt is None:
        stats.skipped["not_text_file"] += 1
        stats.not_text_files.append(str(path))
        return iter(())
    if fmt in ("jsonl", "parquet"):
        return (read_jsonl if fmt == "jsonl" else read_parquet)(path, stats, text_field)
    readers = {"txt": read_txt, "wikiextractor": read_wikiextractor, "gutenberg": read_gutenberg,
               "wikidump": read_wikidump}
    if fmt not in readers:
        raise InputError(f"--format {fmt}: unknown format (expected one of {', '.join(FORMATS)})")
    return readers[fmt](path, stats)


def deal_files(files: tuple[str, ...], workers: int) -> list[list[str]]:
    """Whole files for each worker, balanced by size: largest first, each to the worker with the fewest bytes so
    far (ties: the lower worker), each worker's files then in input order. A pure function of the files' names and
    sizes, so the output of a conversion stays a function of its input."""
    sizes = {f: os.path.getsize(f) for f in files}
    loads, shares = [0] * workers, [[] for _ in range(workers)]
    for file in sorted(files, key=lambda f: (-sizes[f], f)):
        worker = min(range(workers), key=lambda w: (loads[w], w))
        loads[worker] += sizes[file]
        shares[worker].append(file)
    order = {f: i for i, f in enumerate(files)}
    return [sorted(share, key=order.__getitem__) for share in shares]


@dataclass(frozen=True)
class Source:
    """What to read, picklable so each worker process can open it itself. All but ``kind`` are keyword-only.

    ``kind`` "files": local ``files`` of format ``fmt``; "hub": the dataset ``hub`` (``hub.py``), split
    ``hub_split``, read as a stream with ``streaming``; ``hub_commit`` is the commit its revision resolved to
    when the conversion started (every worker reads that one).
    """

    kind: str  # "files" or "hub"
    _: KW_ONLY
    files: tuple[str, ...] = ()
    fmt: str = "auto"
    text_field: str = "text"
    hub: HubSpec | None = None
    hub_split: str = "train"
    streaming: bool = False
    hub_commit: str | None = None

    def describe(self) -> dict:
        if self.kind == "hub":
            return {"hub": self.hub.name, "config": self.hub.config, "revision": self.hub.revision,
                    "commit": self.hub_commit, "split": self.hub_split, "streaming": self.streaming,
                    "text_field": self.text_field}
        return {"files": list(self.files), "format": self.fmt, "text_field": self.text_field}

    def deals_whole_parts(self, workers: int) -> bool:
        """Whether each of ``workers`` reads only its own part of the input (whole files, or its rows of a hub
        dataset), rather than every worker reading everything and keeping every n-th document."""
        return self.kind == "hub" or len(self.files) >= workers > 1

    def documents(self, stats: Stats, share: tuple[int, int] = (0, 1)) -> Iterator[str]:
        """The documents' plain text in order; empty or whitespace-only ones are counted and skipped.

        ``share=(k, n)``: worker k of n. With at least n files, worker k reads whole files (``deal_files``: no
        worker reads input it does not convert); with fewer, each reads every file and keeps (and renders, which
        is not cheap for wikitext) documents k, k + n, ...; of a hub dataset, its rows (``hub.py``).
        """
        k, n = share
        if self.kind == "hub":
            hub = self.hub if self.hub_commit is None else replace(self.hub, revision=self.hub_commit)
            raw: Iterator[str] = documents(hub, self.hub_split, self.streaming, self.text_field, share, stats)
            k, n = 0, 1  # already this worker's share
        elif self.deals_whole_parts(n):
            mine = deal_files(self.files, n)[k]
            raw = (doc for f in mine for doc in read_file(Path(f), self.fmt, stats, self.text_field))
            k, n = 0, 1
        else:
            raw = (doc for f in self.files for doc in read_file(Path(f), self.fmt, stats, self.text_field))
        for index, document in enumerate(raw):
            if index % n != k:
                continue
            text = plain_text(document)
            if text.strip():
                yield text
            else:
                stats.skipped["empty"] += 1
