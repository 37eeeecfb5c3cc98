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


# Texts whose ids enter the fingerprint: cased and accented words, digits, punctuation, runs of whitespace, other
# scripts and emoji, the places where normalizers and pre-tokenizers differ (each special token is added with and
# without spaces around it, where added-token flags differ).
FINGERPRINT_TEXTS = (
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX! the Quick bRown",
    "Perceiver IO, 2021: 223,155,456 parameters (0.5% of 4.6e10)? Yes -- no; maybe... [1] {2} <3> 1/2 $40 #7",
    "naïve café façade Zürich Ærøskøbing São Paulo Kraków ﬁnance ＡＢＣ",
    "  leading and   inner   spaces\ttabs\nnewlines\r\n  trailing  ",
    "東京 北京 서울 Москва Αθήνα عربي हिन्दी 🙂👍🏽",
    "don't won't it's O'Neill's e-mail self-attention state-of-the-art “quoted” ‘single’ — dash",
    "https://example.org/a_b?c=d&e=f user@example.com #hashtag @mention C++ x86_64 __init__",
)
SPECIAL_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """sha256 of what the tokenizer does: its vocabulary (every piece and its id, added tokens included), its special
    tokens, and the ids it gives ``FINGERPRINT_TEXTS`` with and without the tokens it adds.

    Not of its serialized state: one ``tokenizer.json`` loads into states that serialize differently under other
    transformers and tokenizers releases (transformers 5 drops a flag of ``<mask>`` and lists no
    ``additional_special_tokens``; the Unigram scores are written with other digits) while encoding every text the
    same, and shards converted on one machine must train on another."""
    vocab = tokenizer.get_vocab()
    pieces = sorted(vocab)
    specials = sorted(set(tokenizer.all_special_tokens))
    texts = [*FINGERPRINT_TEXTS, *(f"a {token} b{token}c" for token in specials)]
    identity = {
        "piece ids": [vocab[piece] for piece in pieces],
        "specials": {name: str(getattr(tokenizer, name, None)) for name in SPECIAL_ATTRIBUTES},
        "all_specials": specials,
        "ids": [tokenizer(texts, add_special_tokens=added)["input_ids"] for added in (False, True)],
    }
    digest = hashlib.sha256("\0".join(pieces).encode())  # the pieces in sorted order, then what each one is
    digest.update(json.dumps(identity, ensure_ascii=False).encode())
    return digest.hexdigest()


def legacy_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """The fingerprint shards and checkpoints recorded before ``fingerprint`` (sha256 of the serialized state), still
    accepted so that they keep working with the stack that wrote them."""
    state = tokenizer.backend_tokenizer.to_str()
    specials = json.dumps(tokenizer.special_tokens_map, sort_keys=True)
    return hashlib.sha256((state + specials).encode()).hexdigest()


def fingerprints(tokenizer: PreTrainedTokenizerFast) -> tuple[str, str]:
    """The fingerprints a recorded one may equal to name this tokenizer: ``fingerprint``'s (what new shards and
    checkpoints record), then ``legacy_fingerprint``'s."""
    return fingerprint(tokenizer), legacy_fingerprint(tokenizer)
