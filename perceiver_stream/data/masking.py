"""Whole-word (and token-level) masking at load time, deterministic per sample.

Every random number is a hash of (seed, epoch, global sample index, position), never drawn from a global
generator: the masks of a sample are the same whatever the worker count, world size or resumption point,
and the collator runs vectorised over the batch with no Python loop per token. The hash is splitmix64
(Steele et al. 2014), a bijective 64-bit mixer whose outputs pass BigCrush, so the statistics of the masks
are those of independent uniforms.

Whole-word masking (Devlin et al., BERT's WWM release): each word of a sample is selected with probability
``mask_prob``; every token of a selected word becomes ``<mask>`` (``mask_replace_prob``), a random
non-special token (``random_replace_prob``) or stays unchanged, one decision per word. Special and padding
tokens are never selected. Labels are the original ids at selected tokens, ``IGNORE_INDEX`` elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from perceiver_stream.data.format import PADDING, WORD_START, is_word_token
from perceiver_stream.model.mlm import IGNORE_INDEX

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
# Distinct streams of random numbers per purpose, so selection, action and replacement are independent.
_SELECT, _ACTION, _REPLACE = np.uint64(1), np.uint64(2), np.uint64(3)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser applied elementwise to a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def sample_keys(seed: int, epoch: np.ndarray, sample_idx: np.ndarray) -> np.ndarray:
    """One 64-bit key per sample from (seed, epoch, global sample index)."""
    key = splitmix64(np.full(len(sample_idx), seed, dtype=np.uint64))
    key = splitmix64(key ^ epoch.astype(np.uint64))
    return splitmix64(key ^ sample_idx.astype(np.uint64))


def uniform(keys: np.ndarray, positions: np.ndarray, stream: np.uint64) -> np.ndarray:
    """Uniforms in [0, 1) for (B,) keys and (B, L) positions, independent across ``stream``."""
    with np.errstate(over="ignore"):
        x = splitmix64(keys[:, None] ^ (stream * _GOLDEN)) + positions.astype(np.uint64) * _M1
    return (splitmix64(x) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass
class MaskingConfig:
    """How tokens are chosen for the MLM loss.

    Attributes:
        mask_prob: probability that a word (``masking: word``) or token (``masking: token``) is selected.
        mask_replace_prob: probability that a selected word's tokens become ``<mask>``.
        random_replace_prob: probability that they become random non-special tokens (else unchanged).
        masking: ``word`` (whole-word masking, the blueprint's) or ``token``.
    """

    mask_prob: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    masking: str = "word"

    def __post_init__(self) -> None:
        if self.masking not in ("word", "token"):
            raise ValueError(f"data.masking={self.masking!r}: expected 'word' or 'token'")
        for name in ("mask_prob", "mask_replace_prob", "random_replace_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"data.{name}={getattr(self, name)}: expected a probability in [0, 1]")
        if self.mask_replace_prob + self.random_replace_prob > 1.0:
            raise ValueError("data.mask_replace_prob + data.random_replace_prob must not exceed 1")


def count_tokens(batch: dict[str, torch.Tensor]) -> dict[str, int]:
    """Tokens of a collated batch, all of them and those that carry the loss, for Composer's ``DataSpec``.

    With ``accumulate_train_batch_on_tokens`` Composer weights each micro-batch's mean loss by its labelled
    tokens over the step's labelled tokens on all ranks, so the gradient is that of the mean over every labelled
    token of the global batch, whatever the device count and micro-batch size (weighting by samples would not
    be: masked words differ in number from sample to sample).
    """
    return {"total": batch["input_ids"].numel(), "loss_generating": int((batch["labels"] != IGNORE_INDEX).sum())}


class MLMCollator:
    """Collates ``{input_ids, token_type, sample_idx, epoch}`` records into a masked batch.

    The batch holds ``input_ids``, ``labels``, ``attention_mask`` (1 at real tokens) and ``sample_idx``.

    Args:
        config: masking probabilities and mode.
        mask_token_id: id of ``<mask>``.
        special_token_ids: ids never used as random replacements.
        vocab_size: size of the vocabulary random replacements are drawn from.
        seed: the masking seed (by default the run's seed).
    """

    def __init__(
        self, config: MaskingConfig, mask_token_id: int, special_token_ids: Sequence[int], vocab_size: int,
        seed: int,
    ):
        self.config = config
        self.mask_token_id = mask_token_id
        self.seed = seed
        self.replacements = np.setdiff1d(np.arange(vocab_size), np.asarray(list(special_token_ids)))

    def __call__(self, records: Sequence[dict]) -> dict[str, torch.Tensor]:
        input_ids = np.stack([r["input_ids"] for r in records]).astype(np.int64)
        token_type = np.stack([r["token_type"] for r in records])
        sample_idx = np.fromiter((r["sample_idx"] for r in records), dtype=np.int64, count=len(records))
        epoch = np.fromiter((r.get("epoch", 0) for r in records), dtype=np.int64, count=len(records))
        masked, labels = self.mask(input_ids, token_type, sample_keys(self.seed, epoch, sample_idx))
        return {
            "input_ids": torch.from_numpy(masked),
            "labels": torch.from_numpy(labels),
            "attention_mask": torch.from_numpy((token_type != PADDING).astype(np.int64)),
            "sample_idx": torch.from_numpy(sample_idx),
        }

    def mask(self, input_ids: np.ndarray, token_type: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Masked ids and labels for (B, L) ids and token types, given one key per sample."""
        cfg = self.config
        maskable = is_word_token(token_type)
        if cfg.masking == "word":
            # Every token of a word shares its word's index, hence its random numbers.
            unit = np.cumsum(token_type == WORD_START, axis=1)
        else:
            unit = np.broadcast_to(np.arange(input_ids.shape[1]), input_ids.shape)
        selected = maskable & (uniform(keys, unit, _SELECT) < cfg.mask_prob)
        action = uniform(keys, unit, _ACTION)
        to_mask = selected & (action < cfg.mask_replace_prob)
        to_random = selected & ~to_mask & (action < cfg.mask_replace_prob + cfg.random_replace_prob)
        positions = np.broadcast_to(np.arange(input_ids.shape[1]), input_ids.shape)
        replacement_index = (uniform(keys, positions, _REPLACE) * len(self.replacements)).astype(np.int64)
        masked = np.where(to_mask, self.mask_token_id, input_ids)
        masked = np.where(to_random, self.replacements[replacement_index], masked)
        labels = np.where(selected, input_ids, IGNORE_INDEX)
        return masked, labels
