"""Fine-tuning through train.py (``task: classification``) on real Rotten Tomatoes snippets: it learns, a frozen
encoder stays bitwise the pretrained one, checkpoints resume and export with the checkpoint's own logits, on one
process and on two (DDP, FSDP2)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from streaming import StreamingDataset

from perceiver_stream.checkpoint import model_weights, read_checkpoint
from perceiver_stream.config import load
from perceiver_stream.data.classification import ClassificationCollator
from perceiver_stream.data.format import IDS_COLUMN, LABEL_COLUMN, TYPES_COLUMN
from perceiver_stream.data.shared_memory import shared_memory_registration
from perceiver_stream.export import load_checkpoint_model
from perceiver_stream.model.classifier import encoder_state
from perceiver_stream.train.config import TrainConfig, build_train_config
from tests.conftest import REPO, shared_path
from tests.model.test_classifier import save_mlm_checkpoint
from tests.train.conftest import TINY
from tests.train.forked import train

CLASSIFIER = str(REPO / "yamls" / "clf_rotten_tomatoes.yaml")


def tiny_mlm() -> TrainConfig:
    return build_train_config(load(TINY, [f"data.tokenizer={shared_path('tokenizers/xlnet-base-cased')}"]))


def overrides(shards: Path, tmp_path: Path, stream: str = "rotten_tomatoes", **extra) -> list[str]:
    """A classifier yaml's overrides for mlm_tiny's encoder, on CPU, the test shards (as ``stream``) and private
    output folders."""
    mlm = tiny_mlm().model
    settings = {f"model.{key}": getattr(mlm, key) for key in ("vocab_size", "max_seq_len", "num_latents",
                                                                "num_latent_channels")}
    settings.update({f"model.encoder.{k}": v for k, v in dataclasses.asdict(mlm.encoder).items()})
    settings.update({
        "data.tokenizer": shared_path("tokenizers/xlnet-base-cased"), "data.max_seq_len": 128,
        f"data.streams.{stream}.local": shards, "data.num_workers": 1, "precision": "fp32",
        "save_folder": tmp_path / "ckpt", "loggers.tensorboard.log_dir": tmp_path / "tb", "progress_bar": "false",
    })
    settings.update(extra)
    return [f"{k}={v}" for k, v in settings.items()]


def val_batch(shards: Path, size: int = 16) -> dict[str, torch.Tensor]:
    """The first ``size`` val documents, batched as training batches them."""
    with shared_memory_registration():
        dataset = StreamingDataset(local=str(shards / "val"), shuffle=False, batch_size=1)
    records = [{"input_ids": r[IDS_COLUMN], "token_type": r[TYPES_COLUMN], "label": r[LABEL_COLUMN],
                "sample_idx": i} for i, r in enumerate(dataset[i] for i in range(size))]
    return ClassificationCollator()(records)


def assert_exports_with_our_logits(checkpoint: Path, out: Path, shards: Path,
                                   labels: tuple[str, ...] = ("fresh", "rotten")) -> None:
    """The checkpoint exported to ``PerceiverForSequenceClassification`` gives the logits the checkpoint's own model
    gives on real documents, and carries the label names."""
    from transformers import PerceiverForSequenceClassification

    from perceiver_stream.export import export, run_config

    state = read_checkpoint(checkpoint)
    cfg, _ = run_config(state, checkpoint, None, [])
    ours = load_checkpoint_model(checkpoint, cfg.model, state)
    exported = PerceiverForSequenceClassification.from_pretrained(export(checkpoint, out)).eval()
    batch = val_batch(shards)
    with torch.no_grad():
        theirs = exported(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        torch.testing.assert_close(theirs, ours(batch["input_ids"], batch["attention_mask"]), atol=1e-5, rtol=1e-5)
    assert exported.config.id2label == dict(enumerate(labels))


def val_accuracy(checkpoint: Path, shards: Path) -> tuple[float, float]:
    """The classifier's accuracy on the whole val split, computed here from the checkpoint alone, and the
    majority class's."""
    from perceiver_stream.export import run_config

    state = read_checkpoint(checkpoint)
    cfg, _ = run_config(state, checkpoint, None, [])
    model = load_checkpoint_model(checkpoint, cfg.model, state)
    with shared_memory_registration():
        dataset = StreamingDataset(local=str(shards / "val"), shuffle=False, batch_size=1)
    records = [{"input_ids": r[IDS_COLUMN], "token_type": r[TYPES_COLUMN], "label": r[LABEL_COLUMN],
                "sample_idx": i} for i, r in enumerate(dataset[i] for i in range(len(dataset)))]
    correct = 0
    with torch.no_grad():
        for start in range(0, len(records), 256):
            batch = ClassificationCollator()(records[start:start + 256])
            correct += int((model(batch["input_ids"], batch["attention_mask"]).argmax(-1) == batch["labels"]).sum())
    labels = np.array([r["label"] for r in records])
    return correct / len(records), np.bincount(labels).max() / len(labels)


@pytest.mark.slow
def test_a_short_fine_tune_beats_the_majority_class(rotten_tomatoes, tmp_path):
    """Two epochs of 2,048 snippets each (128 batches), from a fresh encoder: accuracy on all 2,432 val snippets."""
    result = train([CLASSIFIER, *overrides(rotten_tomatoes, tmp_path, **{
        "data.epoch_size": 2048, "max_duration": "2ep", "save_interval": "2ep", "eval_interval": "2ep",
        "eval_subset_num_batches": 1,  # the whole val split is scored below, from the checkpoint
        "scheduler.t_warmup": "10ba"})])
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy, majority = val_accuracy(tmp_path / "ckpt" / "latest-rank0.pt", rotten_tomatoes)
    print(accuracy, majority)
    assert 0.55 < majority < 0.6
    assert accuracy > majority + 0.05


def test_a_frozen_encoder_is_the_pretrained_one_bitwise(rotten_tomatoes, tmp_path):
    """From an MLM checkpoint, frozen: every checkpoint holds the pretrained encoder bit for bit while the decoder
    trains; eval accuracy and loss reach TensorBoard; the run resumes; the classifier exports."""
    mlm = tiny_mlm()
    pretrained = tmp_path / "mlm" / "ep0-ba50-rank0.pt"
    pretrained.parent.mkdir()
    weights, _ = save_mlm_checkpoint(pretrained, mlm)
    settings = {"model.encoder_from": pretrained, "model.freeze_encoder": "true", "max_duration": "6ba",
                "save_interval": "3ba", "save_num_checkpoints_to_keep": -1, "eval_interval": "3ba",
                "eval_subset_num_batches": 2, "autoresume": "true",
                "callbacks.sample_log": tmp_path / "samples.jsonl"}
    result = train([CLASSIFIER, *overrides(rotten_tomatoes, tmp_path, **settings)])
    assert result.returncode == 0, result.stderr[-3000:]
    result = train([CLASSIFIER, *overrides(rotten_tomatoes, tmp_path, **{**settings, "max_duration": "9ba"})])
    assert result.returncode == 0, result.stderr[-3000:]

    batches = [json.loads(line)["batch"] for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert batches == list(range(1, 10))  # the second run resumed after batch 6
    states = {b: model_weights(read_checkpoint(tmp_path / "ckpt" / f"ep0-ba{b}-rank0.pt")) for b in (3, 6, 9)}
    for state in states.values():
        encoder = encoder_state(state)
        assert encoder and all(torch.equal(value, weights[key]) for key, value in encoder.items())
    assert not torch.equal(states[3]["decoder.linear.weight"], states[9]["decoder.linear.weight"])
    assert_exports_with_our_logits(tmp_path / "ckpt" / "ep0-ba9-rank0.pt", tmp_path / "hf", rotten_tomatoes)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((tmp_path / "tb").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert {"metrics/eval/MulticlassAccuracy", "metrics/eval/CrossEntropy"} <= set(events.Tags()["scalars"])


@pytest.mark.slow
@pytest.mark.parametrize("parallelism", ["ddp", "fsdp2"])
def test_two_process_fine_tunes_export(rotten_tomatoes, tmp_path, parallelism):
    """DDP (full checkpoints) and FSDP2 with activation checkpointing (sharded checkpoints) on two processes."""
    settings = {"max_duration": "4ba", "save_interval": "4ba", "eval_interval": "4ba", "eval_subset_num_batches": 2,
                "data.num_workers": 0}
    if parallelism == "fsdp2":
        settings.update({"parallelism.fsdp.version": 2, "parallelism.fsdp.state_dict_type": "sharded",
                         "model.activation_checkpointing": "true"})
    result = train([CLASSIFIER, *overrides(rotten_tomatoes, tmp_path, **settings)], processes=2,
                   env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = tmp_path / "ckpt" / ("ep0-ba4" if parallelism == "fsdp2" else "ep0-ba4-rank0.pt")
    assert_exports_with_our_logits(checkpoint, tmp_path / "hf", rotten_tomatoes)


@pytest.mark.slow
def test_the_bbc_news_recipe_fine_tunes_five_topics(bbc_news_quarter, tmp_path):
    result = train([str(REPO / "yamls" / "clf_bbc_news.yaml"), *overrides(bbc_news_quarter, tmp_path, "bbc_news", **{
        "max_duration": "3ba", "save_interval": "3ba", "eval_interval": "3ba", "eval_subset_num_batches": 1,
        "data.num_workers": 0})])
    assert result.returncode == 0, result.stderr[-3000:]
    assert_exports_with_our_logits(tmp_path / "ckpt" / "ep0-ba3-rank0.pt", tmp_path / "hf", bbc_news_quarter,
                                   ("business", "entertainment", "politics", "sports", "tech"))


@pytest.mark.parametrize("case", ["no labels", "different labels", "num_classes"])
def test_labelled_data_mistakes_are_one_line_errors(case, rotten_tomatoes, bbc_news_quarter, tiny_shards, tmp_path):
    settings = {"no labels": {"data.streams.rotten_tomatoes.local": tiny_shards / "wikipedia"},
                "different labels": {"data.streams.bbc_news.local": bbc_news_quarter},
                "num_classes": {"model.num_classes": 3}}[case]
    result = train([CLASSIFIER, *overrides(rotten_tomatoes, tmp_path, **settings)])  # a process of its own: the
    assert result.returncode == 2  # model's check comes after the process group starts
    err = result.stderr.strip().splitlines()[-1]
    expected = {
        "no labels": "train.py: error: stream 'rotten_tomatoes' (train) holds no labels: a classifier trains on "
                     "labelled shards; convert them with perceiver-convert labelled (or rotten-tomatoes, bbc-news)",
        "different labels": "train.py: error: the streams have different labels: rotten_tomatoes (train): ['fresh', "
                            "'rotten']; ",
        "num_classes": "train.py: error: model.num_classes=3 but the shards have 2 labels"}[case]
    assert err.startswith(expected), err
    if case == "different labels":
        assert err.endswith("; convert them with the same --labels")
