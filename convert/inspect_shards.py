"""``perceiver-convert inspect``: what a converted dataset holds, and one sample with its word boundaries."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from streaming import StreamingDataset
from transformers import AutoTokenizer

from perceiver_stream.convert.input import InputError
from perceiver_stream.data.format import IDS_COLUMN, MANIFEST, PADDING, SPECIAL, TYPES_COLUMN, WORD_START
from perceiver_stream.data.shared_memory import shared_memory_registration


def find_splits(root: Path) -> list[Path]:
    """Every split directory (one holding a manifest) under ``root``, sorted."""
    splits = sorted(p.parent for p in root.rglob(MANIFEST))
    if not splits:
        raise InputError(f"{root}: no {MANIFEST} found; is this the --out of perceiver-convert?")
    return splits


def mark_words(tokenizer, ids, types) -> str:
    """Decoded text with ``|`` between words and special tokens in brackets; padding summarised."""
    pieces, word = [], []

    def close_word() -> None:
        if word:
            pieces.append(tokenizer.decode(word).strip())
            word.clear()

    for token_id, token_type in zip(ids.tolist(), types.tolist(), strict=True):
        if token_type == PADDING:
            break
        if token_type in (WORD_START, SPECIAL):
            close_word()
        if token_type == SPECIAL:
            pieces.append(f"[{tokenizer.convert_ids_to_tokens(token_id)}]")
        else:
            word.append(token_id)
    close_word()
    padding = int((types == PADDING).sum())
    return " | ".join(pieces) + (f"  (+{padding} padding)" if padding else "")


def inspect(root: Path, sample: int = 0, tokenizer_path: str | None = None) -> None:
    root = Path(root)
    splits = find_splits(root)
    first = json.loads((splits[0] / MANIFEST).read_text())
    print(f"dataset {root}")
    print(json.dumps({k: first[k] for k in ("format", "package_version", "tokenizer", "max_seq_len", "arguments")},
                     indent=2))
    print(f"{'split':<30} {'documents':>12} {'tokens':>14} {'samples':>10} {'padding':>10}")
    for split in splits:
        counts = json.loads((split / MANIFEST).read_text())["counts"]
        print(f"{str(split.relative_to(root)) or '.':<30} {counts['documents']:>12,} {counts['tokens']:>14,} "
              f"{counts['samples']:>10,} {counts['padding_tokens']:>10,}")
    print("skipped documents:", json.dumps(first["source_counts"]["documents_skipped"]),
          "undecodable bytes replaced:", first["source_counts"]["undecodable_bytes_replaced"])
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or first["tokenizer"]["name"])
    print(f"\n{splits[0].relative_to(root)} sample {sample} (| between words, [special]):")
    print(mark_words(tokenizer, *read_sample(splits[0], sample)))


def read_sample(split: Path, index: int):
    """(input_ids, token_type) of one sample, read without writing into the dataset's directory."""
    with tempfile.TemporaryDirectory() as cache:
        with shared_memory_registration():
            dataset = StreamingDataset(remote=str(split), local=cache, shuffle=False, batch_size=1)
        if not 0 <= index < len(dataset):
            raise InputError(f"--sample {index}: {split} has {len(dataset)} samples")
        record = dataset[index]
        return record[IDS_COLUMN], record[TYPES_COLUMN]
