"""Tokenize documents with word boundaries and pack them into fixed-length samples.

Each sample stores ``input_ids`` and ``token_type`` (codes in ``perceiver_stream.data.format``).

A word cut by a sample boundary starts a word again at the next sample's first token, so each part is a
coherent word of its own and whole-word masking never masks half of a word.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from transformers import PreTrainedTokenizerFast

from perceiver_stream.data.format import PADDING, SPECIAL, WORD_CONTINUATION, WORD_START


def token_dtype(vocab_size: int) -> str:
    """uint16 when every id fits (half the bytes of int32), else int32."""
    return "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "int32"


def tokenize(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, token_type) of each text, without special tokens added."""
    encodings = tokenizer(
        texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False
    ).encodings
    out = []
    for encoding in encodings:
        ids = np.asarray(encoding.ids, dtype=np.int64)
        word_ids = encoding.word_ids
        try:
            words = np.asarray(word_ids, dtype=np.int64)
        except TypeError:  # a special token matched inside the text has no word
            words = np.asarray([-1 if w is None else w for w in word_ids], dtype=np.int64)
        types = np.full(len(ids), WORD_CONTINUATION, dtype=np.uint8)
        if len(ids):
            types[0] = WORD_START
            types[1:][words[1:] != words[:-1]] = WORD_START
            types[words < 0] = SPECIAL
        out.append((ids, types))
    return out


class Packer:
    """Concatenates documents, each followed by the separator, and cuts the stream into samples."""

    def __init__(self, max_seq_len: int, separator_id: int, pad_id: int, pad_final: bool):
        self.max_seq_len = max_seq_len
        self.separator = (np.array([separator_id], dtype=np.int64), np.array([SPECIAL], dtype=np.uint8))
        self.pad_id = pad_id
        self.pad_final = pad_final
        self._ids: list[np.ndarray] = []
        self._types: list[np.ndarray] = []
        self._length = 0
        self.padding_tokens = 0
        self.dropped_tokens = 0

    def add(self, ids: np.ndarray, types: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Append one document and yield every sample that is now complete."""
        self._ids += [ids, self.separator[0]]
        self._types += [types, self.separator[1]]
        self._length += len(ids) + 1
        if self._length < self.max_seq_len:
            return
        all_ids, all_types = np.concatenate(self._ids), np.concatenate(self._types)
        full = self._length // self.max_seq_len * self.max_seq_len
        for start in range(0, full, self.max_seq_len):
            yield self._sample(all_ids[start:start + self.max_seq_len], all_types[start:start + self.max_seq_len])
        self._ids, self._types = [all_ids[full:]], [all_types[full:]]
        self._length -= full

    def finish(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The final remainder, padded to a full sample or dropped (and counted either way)."""
        if not self._length:
            return
        ids, types = np.concatenate(self._ids), np.concatenate(self._types)
        self._ids, self._types = [], []
        if self.pad_final:
            pad = self.max_seq_len - len(ids)
            self.padding_tokens += pad
            yield self._sample(
                np.concatenate([ids, np.full(pad, self.pad_id, dtype=np.int64)]),
                np.concatenate([types, np.full(pad, PADDING, dtype=np.uint8)]),
            )
        else:
            self.dropped_tokens += len(ids)
        self._length = 0

    @staticmethod
    def _sample(ids: np.ndarray, types: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        types = types.copy()
        if types[0] == WORD_CONTINUATION:
            types[0] = WORD_START
        return ids, types
