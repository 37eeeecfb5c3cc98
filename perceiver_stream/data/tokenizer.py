"""Tokenizer identity: the fingerprint shards are checked against before training."""

from __future__ import annotations

import hashlib
import json

from transformers import PreTrainedTokenizerFast


def fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """sha256 of the tokenizer's full serialized state (model, normalizer, pre-tokenizer, added tokens)."""
    state = tokenizer.backend_tokenizer.to_str()
    specials = json.dumps(tokenizer.special_tokens_map, sort_keys=True)
    return hashlib.sha256((state + specials).encode()).hexdigest()
