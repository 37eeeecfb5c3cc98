"""Loading, fingerprinting and training tokenizers for conversion."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from perceiver_stream.convert.input import InputError
from perceiver_stream.data.tokenizer import TokenizerLoadError, fingerprint
from perceiver_stream.data.tokenizer import load_tokenizer as load_any_tokenizer

SPECIAL_TOKENS = ("<pad>", "<unk>", "<cls>", "<sep>", "<mask>")


def load_tokenizer(name_or_dir: str) -> PreTrainedTokenizerFast:
    """A fast tokenizer with mask, pad and separator tokens, or a clear error naming what is missing."""
    try:
        tokenizer = load_any_tokenizer(name_or_dir)
    except TokenizerLoadError as e:
        raise InputError(f"--tokenizer {e}") from None
    if not tokenizer.is_fast:
        raise InputError(f"--tokenizer {name_or_dir}: not a fast tokenizer (word boundaries need word_ids())")
    missing = [name for name in ("mask_token", "pad_token") if getattr(tokenizer, name) is None]
    if tokenizer.sep_token is None and tokenizer.eos_token is None:
        missing.append("sep_token (or eos_token)")
    if missing:
        raise InputError(f"--tokenizer {name_or_dir}: has no {', '.join(missing)}; masked LM shards need them")
    return tokenizer


def separator_id(tokenizer: PreTrainedTokenizerFast) -> int:
    """The token placed between concatenated documents."""
    return tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id


def describe(tokenizer: PreTrainedTokenizerFast, name: str) -> dict:
    """What a manifest records about the tokenizer, and what training checks shards against."""
    return {
        "name": name,
        "fingerprint": fingerprint(tokenizer),
        "vocab_size": len(tokenizer),
        "special_token_ids": {
            key: tokenizer.convert_tokens_to_ids(token)
            for key, token in sorted(tokenizer.special_tokens_map.items()) if isinstance(token, str)
        },
        "pad_token_id": tokenizer.pad_token_id,
        "mask_token_id": tokenizer.mask_token_id,
        "separator_token_id": separator_id(tokenizer),
    }


def paragraphs(texts: Iterator[str], every: int = 1) -> Iterator[str]:
    """Every ``every``-th non-blank line of the documents. The unigram trainer's time grows with the length of what
    it is fed (measured: a novel per text 156 s, a paragraph per text 65 s, the same 7 MB and an as good
    vocabulary) and with how much of it there is: a sample, as sentencepiece's ``input_sentence_size`` takes."""
    lines = (line for text in texts for line in text.split("\n") if line.strip())
    yield from itertools.islice(lines, 0, None, every)


def train_unigram(texts: Iterator[str], vocab_size: int, out: Path, *, every: int = 1) -> PreTrainedTokenizerFast:
    """Train a SentencePiece-style unigram tokenizer (NFKC, whitespace runs as one space, Metaspace) on every
    ``every``-th paragraph of the texts and save it where AutoTokenizer loads it. The files are written beside ``out``
    and moved in with ``tokenizer.json`` last, so a tokenizer.json in ``out`` means a complete tokenizer (a run killed
    midway leaves none to be mistaken for one)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    backend = Tokenizer(models.Unigram())
    # Every run of whitespace is one space (as sentencepiece's normalisation does): the trainer sees lines, so a
    # newline or tab left in a document would be no piece of the vocabulary, an <unk> gluing two words into one.
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " ")])
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), unk_token="<unk>", show_progress=True
    )
    backend.train_from_iterator(paragraphs(texts, every), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", cls_token="<cls>", sep_token="<sep>",
        mask_token="<mask>", model_input_names=["input_ids", "attention_mask"],
    )
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer.save_pretrained(str(partial))
    out.mkdir(parents=True, exist_ok=True)
    for file in sorted(partial.iterdir(), key=lambda f: f.name == "tokenizer.json"):
        os.replace(file, out / file.name)
    partial.rmdir()
    return tokenizer
