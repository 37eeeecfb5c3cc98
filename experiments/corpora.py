"""The pretraining text of ../shared: its training files converted once into the shards ours trains on (and the
transformers legs read back as arrays), its held-out files, and the fixed ``<mask>`` scoring every leg is judged by."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from streaming import LocalDataset

from perceiver_stream.convert.input import Stats
from perceiver_stream.convert.packing import Packer, tokenize
from perceiver_stream.convert.sources import Source
from perceiver_stream.convert.writer import Options, convert
from perceiver_stream.data.dataset import verify_shards
from perceiver_stream.data.format import IDS_COLUMN, TYPES_COLUMN, is_word_token
from perceiver_stream.data.masking import IGNORE_INDEX, MaskingConfig, MLMCollator

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TOKENIZER = SHARED / "tokenizers" / "xlnet-base-cased"
CACHE = REPO / "runs" / "experiments-cache"
STREAMS = {"wiki": "wikipedia", "books": "bookcorpus"}  # corpus -> its stream in experiments/mlm_comparison.yaml
HELD_OUT_BOOKS = 13
EVAL_SEED = 20261128
# Composer's evaluation needs a val split, which takes its documents out of training; the Scorer's held-out files
# are what counts, so it is a few Wikipedia articles (1% of the samples) and no book.
VAL_FRACTIONS = {"wikipedia": 0.005, "bookcorpus": 0.0}


def require_shared(prog: str) -> None:
    """Stop with one line, not a traceback, when the tokenizer and corpora of ../shared are absent."""
    needed = (TOKENIZER, SHARED / "corpora" / "wikipedia", SHARED / "corpora" / "books")
    missing = [path for path in needed if not path.is_dir()]
    if missing:
        raise SystemExit(f"{prog}: needs the real data in {SHARED} beside the repository (the xlnet-base-cased "
                         f"tokenizer, corpora/wikipedia and corpora/books); {missing[0]} is absent")


def key_of(value) -> str:
    """A short stable digest of ``value`` (JSON-serialisable): a cache key."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def corpus_files() -> dict[str, tuple[Source, Source]]:
    """(train, held-out) sources per corpus: all but the last Wikipedia extract / the last 13 books are trained on."""
    wiki = sorted((SHARED / "corpora" / "wikipedia").glob("enwiki2015_wiki_0*"))
    books = sorted((SHARED / "corpora" / "books").glob("*.txt"))
    if len(wiki) < 2 or len(books) <= HELD_OUT_BOOKS:
        raise SystemExit(f"experiments: the corpora in {SHARED / 'corpora'} are incomplete ({len(wiki)} Wikipedia "
                         f"extracts, {len(books)} books)")
    return {
        "wiki": (Source("files", files=tuple(map(str, wiki[:-1])), fmt="wikiextractor"),
                 Source("files", files=(str(wiki[-1]),), fmt="wikiextractor")),
        "books": (Source("files", files=tuple(map(str, books[:-HELD_OUT_BOOKS])), fmt="gutenberg"),
                  Source("files", files=tuple(map(str, books[-HELD_OUT_BOOKS:])), fmt="gutenberg")),
    }


def training_shards(seq_len: int, cache: Path) -> Path:
    """The training files of every corpus converted as ``perceiver-convert`` does (two workers; a few minutes the
    first time), cached under a key of the files, the tokenizer and the options: a directory with one stream per
    corpus (``STREAMS``), each with ``train`` and ``val``."""
    streams = {STREAMS[name]: train for name, (train, _) in corpus_files().items()}
    options = {name: Options(tokenizer=str(TOKENIZER), max_seq_len=seq_len, val_fraction=VAL_FRACTIONS[name],
                             workers=2) for name in streams}
    out = cache / f"shards-{key_of({n: [s.describe(), asdict(options[n])] for n, s in streams.items()})}"
    if not out.exists():
        partial = out.with_suffix(".partial")
        shutil.rmtree(partial, ignore_errors=True)
        for name, source in streams.items():
            convert({".": source}, partial / name, options[name])
        partial.rename(out)
    return out


def shard_samples(split_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, token_type) arrays (S, seq_len) of every sample of one converted split, cached beside the shards."""
    path = split_dir / "samples.npz"
    if path.exists():
        data = np.load(path)
        return data["ids"], data["types"]
    verify_shards(split_dir.parent.name, split_dir)  # also writes the decompressed shards LocalDataset reads
    dataset = LocalDataset(str(split_dir))
    records = [dataset[i] for i in range(len(dataset))]
    ids = np.stack([r[IDS_COLUMN] for r in records]).astype(np.int32)
    types = np.stack([r[TYPES_COLUMN] for r in records])
    np.savez(path, ids=ids, types=types)
    return ids, types


def pack(source: Source, tokenizer, seq_len: int, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, token_type) arrays (S, seq_len) of a held-out source, cached by its files and the tokenizer."""
    path = cache / f"{key_of([source.describe(), seq_len, tokenizer.name_or_path])}.npz"
    if path.exists():
        data = np.load(path)
        return data["ids"], data["types"]
    packer = Packer(seq_len, tokenizer.sep_token_id, tokenizer.pad_token_id, pad_final=False)
    samples = []
    docs = list(source.documents(Stats()))
    for start in range(0, len(docs), 256):
        for ids, types in tokenize(tokenizer, docs[start:start + 256]):
            samples += list(packer.add(ids, types))
    ids = np.stack([s[0] for s in samples]).astype(np.int32)
    types = np.stack([s[1] for s in samples])
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, ids=ids, types=types)
    return ids, types


@dataclass
class Corpora:
    """What the pretraining legs share: the tokenizer, the converted shards (ours), their training samples as arrays
    per corpus (the transformers legs), the held-out samples per corpus and the most frequent training token."""

    tokenizer: object
    shards: Path
    train: dict[str, tuple[np.ndarray, np.ndarray]]
    held_out: dict[str, tuple[np.ndarray, np.ndarray]]
    most_frequent: int


def prepare_corpora(cache: Path, seq_len: int) -> Corpora:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER))
    shards = training_shards(seq_len, cache)
    train = {name: shard_samples(shards / stream / "train") for name, stream in STREAMS.items()}
    held_out = {name: pack(held, tokenizer, seq_len, cache) for name, (_, held) in corpus_files().items()}
    counts = Counter()
    for ids, types in train.values():
        counts.update(ids[is_word_token(types)].tolist())
    return Corpora(tokenizer, shards, train, held_out, counts.most_common(1)[0][0])


class Scorer:
    """Fixed whole-word ``<mask>`` masks on held-out samples; scores a model's argmax on them."""

    def __init__(self, held_out: dict[str, tuple[np.ndarray, np.ndarray]], tokenizer, most_frequent: int,
                 per_corpus: int):
        collator = MLMCollator(MaskingConfig(mask_replace_prob=1.0, random_replace_prob=0.0),
                               tokenizer.mask_token_id, tokenizer.all_special_ids, len(tokenizer), seed=EVAL_SEED)
        self.batches: dict[str, list[dict]] = {}
        for name, (ids, types) in held_out.items():
            rows = np.random.default_rng(EVAL_SEED).permutation(len(ids))[:per_corpus]
            records = [{"input_ids": ids[i], "token_type": types[i], "sample_idx": int(i)} for i in rows]
            self.batches[name] = [collator(records[s:s + 64]) for s in range(0, len(records), 64)]
        self.unigram = {name: self._accuracy(lambda b: torch.full_like(b["labels"], most_frequent), name)
                        for name in self.batches}

    def _accuracy(self, predict, name: str) -> float:
        correct = total = 0
        for batch in self.batches[name]:
            labelled = batch["labels"] != IGNORE_INDEX
            correct += int((predict(batch)[labelled] == batch["labels"][labelled]).sum())
            total += int(labelled.sum())
        return correct / total

    @torch.no_grad()
    def score(self, logits_fn) -> dict[str, float]:
        """Accuracy per corpus; ``logits_fn(batch)`` returns (B, L, V) logits."""
        return {name: self._accuracy(lambda b: logits_fn(b).argmax(-1), name) for name in self.batches}


def mean(scores: dict[str, float]) -> float:
    return sum(scores.values()) / len(scores)
