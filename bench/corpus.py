"""The text and tokenizers the benchmarks read, on any fresh clone.

Beside a checkout with ``../shared`` (the development machines and CI): its English Wikipedia extracts, Gutenberg
books, ``xlnet-base-cased`` and ``bert-base-uncased``. Elsewhere: the quickstart's corpus from the package registries
(``perceiver_stream.convert.registry_corpora``: a Wikipedia excerpt and Jane Austen's novels), a unigram tokenizer
trained on it once (cached), and ``bert-base-uncased`` only where the Hugging Face cache holds it. Figures from the two
corpora differ; every benchmark's JSON names the one it read (``corpus``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from perceiver_stream.convert.cli import DOWNLOADS
from perceiver_stream.convert.input import Stats
from perceiver_stream.convert.registry_corpora import REGISTRY_VOCAB_SIZE
from perceiver_stream.convert.sources import Source

SHARED = Path(__file__).resolve().parents[2] / "shared"
CACHE = Path.home() / ".cache" / "perceiver-stream" / "bench"


@dataclass(frozen=True)
class Corpus:
    """``streams`` (``wikipedia``, ``bookcorpus`` where available) and the tokenizer they are converted with."""

    name: str
    streams: dict[str, Source]
    tokenizer: str

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(file for source in self.streams.values() for file in source.files)


def bench_corpus(*, books: int | None = None) -> Corpus:
    """../shared's Wikipedia extracts (2015) and Gutenberg books (the first ``books``, or all) with xlnet-base-cased;
    without ../shared, the registry corpus with its trained tokenizer."""
    if (SHARED / "corpora").is_dir() and (SHARED / "tokenizers" / "xlnet-base-cased").is_dir():
        wiki = tuple(str(p) for p in sorted((SHARED / "corpora" / "wikipedia").glob("enwiki2015_wiki_0*")))
        book_files = tuple(str(p) for p in sorted((SHARED / "corpora" / "books").glob("*.txt"))[:books])
        return Corpus("shared", {"wikipedia": Source("files", files=wiki, fmt="wikiextractor"),
                                 "bookcorpus": Source("files", files=book_files, fmt="gutenberg")},
                      str(SHARED / "tokenizers" / "xlnet-base-cased"))
    from perceiver_stream.convert.registry_corpora import registry_texts

    streams = registry_texts(DOWNLOADS)
    return Corpus("registry", streams, registry_tokenizer(streams))


def registry_tokenizer(streams: dict[str, Source]) -> str:
    """A unigram tokenizer trained on ``streams`` once, kept in the bench cache."""
    out = CACHE / f"tokenizer-{REGISTRY_VOCAB_SIZE}"
    if not (out / "tokenizer.json").exists():
        from perceiver_stream.convert.tokenizer import train_unigram

        texts = (text for source in streams.values() for text in source.documents(Stats()))
        train_unigram(texts, REGISTRY_VOCAB_SIZE, out)
    return str(out)


def bert_tokenizer():
    """``bert-base-uncased`` (the one tokenizer transformers' ``DataCollatorForWholeWordMask`` takes), or None."""
    from transformers import AutoTokenizer

    local = SHARED / "tokenizers" / "bert-base-uncased"
    try:  # without ../shared, from the Hugging Face cache
        return AutoTokenizer.from_pretrained(str(local) if local.is_dir() else "bert-base-uncased")
    except OSError:
        return None
