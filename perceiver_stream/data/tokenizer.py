"""Tokenizer identity: the fingerprint shards are checked against before training."""

from __future__ import annotations

import hashlib
import json

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from perceiver_stream.errors import first_line


class TokenizerLoadError(ValueError):
    """A tokenizer that cannot be loaded; the message is transformers' reason, on one line."""


def load_tokenizer(name_or_dir: str, **kwargs) -> PreTrainedTokenizerFast:
    """``AutoTokenizer.from_pretrained``, with any failure as a ``TokenizerLoadError``: transformers raises
    OSError, ValueError, or for a directory without tokenizer files an AttributeError."""
    try:
        return AutoTokenizer.from_pretrained(name_or_dir, use_fast=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - third-party loading of user input; the reason is passed on
        raise TokenizerLoadError(f"{name_or_dir}: cannot load a tokenizer ({first_line(e)}); expected a hub name or a "
                                 "directory saved with save_pretrained") from None


def fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """sha256 of the tokenizer's full serialized state (model, normalizer, pre-tokenizer, added tokens)."""
    state = tokenizer.backend_tokenizer.to_str()
    specials = json.dumps(tokenizer.special_tokens_map, sort_keys=True)
    return hashlib.sha256((state + specials).encode()).hexdigest()
