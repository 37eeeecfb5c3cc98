"""The resume guard refuses a checkpoint written with a different value of every setting it records, and
nothing else (table-driven over the yaml keys; the end-to-end refusal is in test_resume.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from perceiver_stream.config import ConfigError, build, load
from perceiver_stream.train.callbacks import ResumeGuard
from perceiver_stream.train.config import TrainConfig
from perceiver_stream.train.trainer import resume_settings
from tests.train.conftest import TINY

CHANGES = {  # yaml override -> the guard's name for it
    "global_train_batch_size=64": "global_train_batch_size",
    "seed=18": "seed",
    "data.masking_seed=5": "data.masking_seed",
    "data.shuffle=false": "data.shuffle",
    "data.shuffle_algo=py1s": "data.shuffle_algo",
    "data.shuffle_seed=1": "data.shuffle_seed",
    "data.shuffle_block_size=1000": "data.shuffle_block_size",
    "data.num_canonical_nodes=4": "data.num_canonical_nodes",
    "data.epoch_size=5000": "data.epoch_size",
    "data.max_seq_len=64": "data.max_seq_len",
    "data.masking=token": "data.masking",
    "data.mask_prob=0.2": "data.masking",
    "data.mask_replace_prob=0.7": "data.masking",
    "data.random_replace_prob=0.2": "data.masking",
    "data.streams.wikipedia.proportion=0.7": "data.streams",
    "data.streams.bookcorpus=null": "data.streams",
}
UNGUARDED = ["data.num_workers=3", "device_train_microbatch_size=8", "optimizer.lr=0.01", "max_duration=400ba"]


def settings(*overrides: str, fingerprint: str = "f" * 64) -> dict:
    base = ["data.streams.wikipedia.local=a", "data.streams.bookcorpus.local=b"]
    cfg = build(TrainConfig, load(TINY, [*base, *overrides]))
    return resume_settings(cfg, SimpleNamespace(tokenizer_fingerprint=fingerprint))


@pytest.mark.parametrize("override", list(CHANGES))
def test_every_recorded_setting_is_guarded(override):
    saved = ResumeGuard(settings()).state_dict()
    with pytest.raises(ConfigError, match=rf"cannot resume exactly: .*{CHANGES[override]}=.* in the checkpoint but"):
        ResumeGuard(settings(override)).load_state_dict(saved)


def test_another_tokenizer_is_guarded_and_other_settings_are_not():
    saved = ResumeGuard(settings()).state_dict()
    with pytest.raises(ConfigError, match="tokenizer fingerprint="):
        ResumeGuard(settings(fingerprint="0" * 64)).load_state_dict(saved)
    ResumeGuard(settings(*UNGUARDED)).load_state_dict(saved)  # free to change between restarts
    assert set(saved["settings"]) == set(CHANGES.values()) | {"tokenizer fingerprint"}


def test_a_checkpoint_that_recorded_the_tokenizers_earlier_fingerprint_resumes():
    """Checkpoints of earlier releases recorded ``legacy_fingerprint``; the same tokenizer resumes them, another not."""
    saved = ResumeGuard(settings(fingerprint="1" * 64)).state_dict()
    ResumeGuard(settings(fingerprint="0" * 64), {"tokenizer fingerprint": ("0" * 64, "1" * 64)}).load_state_dict(saved)
    with pytest.raises(ConfigError, match="tokenizer fingerprint='1{64}' in the checkpoint but '0{64}' now"):
        ResumeGuard(settings(fingerprint="0" * 64), {"tokenizer fingerprint": ("0" * 64, "2" * 64)}).load_state_dict(
            saved)
