"""Whole-word masking: statistics over >= 10,000 real samples, determinism, token-level mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from perceiver_stream.config import build
from perceiver_stream.data import DataConfig, MaskingConfig, MLMCollator, build_dataloader, prepare
from perceiver_stream.data.format import PADDING, SPECIAL, WORD_START
from tests.conftest import shared_path


def data_config(shards, tokenizer: str, **overrides) -> DataConfig:
    settings = dict(streams={"wiki": {"local": str(shards)}}, tokenizer=str(shared_path(f"tokenizers/{tokenizer}")),
                    max_seq_len=128, num_workers=0, shuffle=False)
    settings.update(overrides)
    return build(DataConfig, settings, "data.")


def raw_records(shards, tokenizer: str) -> list[dict]:
    """Every training record (unmasked) in index order."""
    cfg = data_config(shards, tokenizer)
    loader = build_dataloader(cfg, prepare(cfg, ("train",)), "train", batch_size=1, seed=0)
    dataset = loader.dataset
    return [dataset[i] for i in range(len(dataset))]


@pytest.fixture(scope="module")
def xlnet_records(xlnet_shards):
    return raw_records(xlnet_shards, "xlnet-base-cased")


def collator(tokenizer_name: str, seed: int = 0, **config) -> MLMCollator:
    tokenizer = AutoTokenizer.from_pretrained(str(shared_path(f"tokenizers/{tokenizer_name}")))
    return MLMCollator(MaskingConfig(**config), tokenizer.mask_token_id, tokenizer.all_special_ids, len(tokenizer),
                       seed)


def word_spans(types: np.ndarray) -> list[tuple[int, int]]:
    starts = np.flatnonzero(types == WORD_START)
    ends = np.append(starts[1:], len(types))
    spans = []
    for start, end in zip(starts, ends, strict=True):
        stop = start + 1
        while stop < end and types[stop] == 0:
            stop += 1
        spans.append((start, stop))
    return spans


def test_whole_word_statistics_on_real_samples(xlnet_records):
    assert len(xlnet_records) >= 10_000
    masker = collator("xlnet-base-cased", seed=1234)
    special = set(AutoTokenizer.from_pretrained(str(shared_path("tokenizers/xlnet-base-cased"))).all_special_ids)
    words = selected = 0
    actions = {"mask": 0, "random": 0, "keep": 0}
    for start in range(0, len(xlnet_records), 64):
        records = xlnet_records[start:start + 64]
        batch = masker(records)
        for record, ids, labels in zip(records, batch["input_ids"].numpy(), batch["labels"].numpy(), strict=True):
            original, types = record["input_ids"].astype(np.int64), record["token_type"]
            chosen = labels != -100
            assert not chosen[(types == SPECIAL) | (types == PADDING)].any()
            assert np.array_equal(labels[chosen], original[chosen])
            assert np.array_equal(ids[~chosen], original[~chosen])
            for a, b in word_spans(types):
                words += 1
                if not chosen[a:b].any():
                    continue
                assert chosen[a:b].all(), "a word was partially selected"
                selected += 1
                if (ids[a:b] == masker.mask_token_id).all():
                    actions["mask"] += 1
                elif np.array_equal(ids[a:b], original[a:b]):
                    actions["keep"] += 1
                else:
                    assert not (set(ids[a:b].tolist()) & special)
                    actions["random"] += 1
    assert abs(selected / words - 0.15) < 0.005
    assert abs(actions["mask"] / selected - 0.8) < 0.01
    assert abs(actions["random"] / selected - 0.1) < 0.01
    assert abs(actions["keep"] / selected - 0.1) < 0.01


def test_wordpiece_words_are_masked_whole(bert_shards):
    records = raw_records(bert_shards, "bert-base-uncased")
    tokenizer = AutoTokenizer.from_pretrained(str(shared_path("tokenizers/bert-base-uncased")))
    batch = collator("bert-base-uncased")(records)
    partial = 0
    for record, labels in zip(records, batch["labels"].numpy(), strict=True):
        tokens = tokenizer.convert_ids_to_tokens(record["input_ids"].tolist())
        chosen = labels != -100
        for i in range(1, len(tokens)):
            if tokens[i].startswith("##") and i % 128 != 0:
                partial += chosen[i] != chosen[i - 1]
    assert partial == 0
    assert 0.13 < (batch["labels"] != -100).sum() / (batch["attention_mask"].sum()) < 0.17


def test_masks_are_a_pure_function_of_seed_epoch_and_index(xlnet_records):
    masker = collator("xlnet-base-cased", seed=7)
    records = xlnet_records[:32]
    batch = masker(records)
    # another batch composition and order (other workers, world size or resumption point)
    shuffled = masker(records[16:] + xlnet_records[500:510] + records[:16][::-1])
    order = {int(i): k for k, i in enumerate(shuffled["sample_idx"])}
    for k, index in enumerate(batch["sample_idx"].tolist()):
        assert torch.equal(batch["input_ids"][k], shuffled["input_ids"][order[index]])
        assert torch.equal(batch["labels"][k], shuffled["labels"][order[index]])
    next_epoch = masker([{**r, "epoch": 1} for r in records])
    assert not torch.equal(next_epoch["labels"], batch["labels"])
    other_seed = collator("xlnet-base-cased", seed=8)(records)
    assert not torch.equal(other_seed["labels"], batch["labels"])


def test_token_level_masking(xlnet_records):
    masker = collator("xlnet-base-cased", masking="token")
    records = xlnet_records[:2000]
    batch = masker(records)
    types = np.stack([r["token_type"] for r in records])
    chosen = batch["labels"].numpy() != -100
    maskable = (types == 0) | (types == 1)
    assert abs(chosen.sum() / maskable.sum() - 0.15) < 0.005
    assert not chosen[~maskable].any()
    # a multi-token word is now sometimes partially selected
    continuation = types == 0
    assert (chosen[:, 1:] != chosen[:, :-1])[continuation[:, 1:]].any()
    assert torch.equal(batch["labels"], masker(records)["labels"])


def test_loader_masks_do_not_depend_on_worker_count(xlnet_shards):
    masks = []
    for workers in (0, 2):
        cfg = data_config(xlnet_shards, "xlnet-base-cased", num_workers=workers, shuffle=True, epoch_size=512)
        loader = build_dataloader(cfg, prepare(cfg, ("train",)), "train", batch_size=16, seed=3)
        seen = {}
        for batch in loader:
            for index, ids, labels in zip(batch["sample_idx"].tolist(), batch["input_ids"], batch["labels"],
                                          strict=True):
                seen[index] = (ids, labels)
        masks.append(seen)
    assert masks[0].keys() == masks[1].keys() and len(masks[0]) == 512
    for index, (ids, labels) in masks[0].items():
        assert torch.equal(ids, masks[1][index][0]) and torch.equal(labels, masks[1][index][1])


def test_resumed_loader_gives_the_same_remaining_batches(xlnet_shards):
    cfg = data_config(xlnet_shards, "xlnet-base-cased", shuffle=True, epoch_size=256)
    info = prepare(cfg, ("train",))
    reference = list(build_dataloader(cfg, info, "train", batch_size=16, seed=5))
    loader = build_dataloader(cfg, info, "train", batch_size=16, seed=5)
    iterator = iter(loader)
    for _ in range(5):
        next(iterator)
    state = loader.state_dict()
    del iterator
    resumed = build_dataloader(cfg, info, "train", batch_size=16, seed=5)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(reference) - 5
    for ours, theirs in zip(rest, reference[5:], strict=True):
        for key in ("sample_idx", "input_ids", "labels", "attention_mask"):
            assert torch.equal(ours[key], theirs[key])


def test_invalid_masking_config_names_the_key():
    with pytest.raises(ValueError, match="data.masking='span'"):
        MaskingConfig(masking="span")
    with pytest.raises(ValueError, match="data.mask_prob=1.5"):
        MaskingConfig(mask_prob=1.5)
