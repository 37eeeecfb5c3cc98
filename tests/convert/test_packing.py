"""Tokenization with word boundaries and packing into fixed-length samples."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from perceiver_stream.convert.packing import Packer, token_dtype, tokenize
from perceiver_stream.data.format import PADDING, SPECIAL, WORD_CONTINUATION, WORD_START
from tests.conftest import shared_path

TEXTS = ["Perceivers unbelievably tokenize antidisestablishmentarianism, don't they?",
         "Short.", "Another reasonably long document about Wikipedia and BookCorpus pretraining."]


@pytest.fixture(scope="module", params=["xlnet-base-cased", "bert-base-uncased"])
def tokenizer(request):
    return AutoTokenizer.from_pretrained(str(shared_path(f"tokenizers/{request.param}")), use_fast=True)


def test_word_starts_follow_word_ids(tokenizer):
    encoded = tokenize(tokenizer, TEXTS)
    assert (encoded[0][1] == WORD_CONTINUATION).any()  # the long words are split
    for (ids, types), text in zip(encoded, TEXTS, strict=True):
        encoding = tokenizer(text, add_special_tokens=False)
        assert ids.tolist() == encoding.input_ids
        word_ids = encoding.word_ids()
        expected = [WORD_START if i == 0 or word_ids[i] != word_ids[i - 1] else WORD_CONTINUATION
                    for i in range(len(word_ids))]
        assert types.tolist() == expected


def test_wordpiece_continuations_are_hash_pieces():
    tokenizer = AutoTokenizer.from_pretrained(str(shared_path("tokenizers/bert-base-uncased")), use_fast=True)
    ((ids, types),) = tokenize(tokenizer, ["unbelievably antidisestablishmentarianism"])
    tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
    assert [t.startswith("##") for t in tokens] == [ty == WORD_CONTINUATION for ty in types]


def test_packing_preserves_the_token_stream_and_cut_words(tokenizer):
    encoded = tokenize(tokenizer, TEXTS * 7)
    packer = Packer(max_seq_len=16, separator_id=4, pad_id=5, pad_final=True)
    samples = [s for ids, types in encoded for s in packer.add(ids, types)] + list(packer.finish())
    assert all(len(ids) == len(types) == 16 for ids, types in samples)
    flat_ids = np.concatenate([ids for ids, _ in samples])
    flat_types = np.concatenate([types for _, types in samples])
    expected_ids = np.concatenate([np.append(ids, 4) for ids, _ in encoded])
    real = flat_types != PADDING
    assert np.array_equal(flat_ids[real], expected_ids)
    assert packer.padding_tokens == (~real).sum() == 16 * len(samples) - len(expected_ids)
    assert np.all(flat_types[flat_ids == 4] == SPECIAL)
    expected_types = np.concatenate([np.append(t, SPECIAL) for _, t in encoded])
    # only sample starts may differ: a continuation there becomes the start of a word
    diff = np.flatnonzero(flat_types[real] != expected_types)
    assert np.all(diff % 16 == 0) and len(diff) > 0
    assert np.all(expected_types[diff] == WORD_CONTINUATION)
    assert all(types[0] != WORD_CONTINUATION for _, types in samples)


def test_drop_final_counts_the_dropped_tokens():
    packer = Packer(max_seq_len=8, separator_id=1, pad_id=0, pad_final=False)
    ids = np.arange(10, 21)
    samples = list(packer.add(ids, np.ones(11, dtype=np.uint8))) + list(packer.finish())
    assert len(samples) == 1 and packer.dropped_tokens == 12 - 8 and packer.padding_tokens == 0


def test_token_dtype_fits_the_vocabulary():
    assert token_dtype(32000) == "uint16" and token_dtype(65536) == "uint16"
    assert token_dtype(65537) == "int32" and token_dtype(250_000) == "int32"
