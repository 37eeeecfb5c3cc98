"""The classifier: the same logits as transformers' PerceiverForSequenceClassification, pretrained encoders loaded
bitwise from every kind of checkpoint, and one-line errors for an encoder that does not fit."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.distributed.checkpoint as dcp
from transformers import AutoTokenizer, PerceiverForSequenceClassification, pipeline

from perceiver_stream.config import ConfigError, build, load, to_dict
from perceiver_stream.data.tokenizer import fingerprint
from perceiver_stream.export import export
from perceiver_stream.model.classifier import build_classifier, encoder_state
from perceiver_stream.model.composer_classifier import ComposerPerceiverClassifier
from perceiver_stream.model.composer_model import ComposerPerceiverMLM
from perceiver_stream.model.hf import to_hf, to_hf_classifier
from perceiver_stream.train.config import TrainConfig, build_train_config
from perceiver_stream.train.finetune import initial_classifier
from tests.conftest import REPO, shared_path

TINY = REPO / "yamls" / "mlm_tiny.yaml"
CLASSIFIER = REPO / "yamls" / "clf_rotten_tomatoes.yaml"
SHAPE_KEYS = ("vocab_size", "max_seq_len", "num_latents", "num_latent_channels", "encoder")


def tiny_mlm() -> TrainConfig:
    return build(TrainConfig, load(TINY, [f"data.tokenizer={shared_path('tokenizers/xlnet-base-cased')}"]))


def classifier_config(mlm: TrainConfig, *overrides: str):
    """clf_rotten_tomatoes.yaml with mlm_tiny's encoder settings (what fine-tuning an mlm_tiny run takes), then
    ``overrides``."""
    shape = [f"model.{key}={getattr(mlm.model, key)}" for key in SHAPE_KEYS if key != "encoder"]
    shape += [f"model.encoder.{k}={v}" for k, v in dataclasses.asdict(mlm.model.encoder).items()]
    return build_train_config(load(CLASSIFIER, [*shape, f"data.tokenizer={mlm.data.tokenizer}", "precision=fp32",
                                                "data.max_seq_len=128", *overrides]))


def save_mlm_checkpoint(path, mlm: TrainConfig, *, seed: int = 0):
    """An MLM checkpoint laid out as Composer writes it (activation-checkpoint wrappers in its names), with the run
    description training stores; returns the model's weights."""
    torch.manual_seed(seed)
    composer_model = ComposerPerceiverMLM(dataclasses.replace(mlm.model, activation_checkpointing=True),
                                          mask_token_id=6)
    with torch.no_grad():  # not an initialisation: trained-looking weights
        for param in composer_model.parameters():
            param.add_(torch.randn_like(param) * 0.01)
    tokenizer = AutoTokenizer.from_pretrained(mlm.data.tokenizer)
    description = {"config": to_dict(mlm), "tokenizer_fingerprint": fingerprint(tokenizer)}
    torch.save({"state": {"model": composer_model.state_dict(), "callbacks": {"RunDescription": description}}}, path)
    return {k.removeprefix("model.").replace("._checkpoint_wrapped_module", ""): v
            for k, v in composer_model.state_dict().items()}, fingerprint(tokenizer)


@pytest.fixture(scope="module")
def mlm_checkpoint(tmp_path_factory):
    mlm = tiny_mlm()
    path = tmp_path_factory.mktemp("mlm") / "ep0-ba10-rank0.pt"
    weights, tokenizer_fingerprint = save_mlm_checkpoint(path, mlm)
    return path, mlm, weights, tokenizer_fingerprint


def assert_encoder_equal(model, weights) -> None:
    ours = encoder_state(model.state_dict())
    assert ours and all(torch.equal(value, weights[key]) for key, value in ours.items())


def test_export_has_transformers_logits_and_label_names(mlm_checkpoint, tmp_path):
    _, mlm, _, tokenizer_fingerprint = mlm_checkpoint
    cfg = classifier_config(mlm)
    torch.manual_seed(1)
    model = build_classifier(cfg.model, 3).eval()
    with torch.no_grad():  # a decoder that is not at its initialisation
        for param in model.decoder.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    input_ids = torch.randint(7, 32000, (3, 40), generator=torch.Generator().manual_seed(2))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 25:] = 0
    attention_mask[2, 3:] = 0
    with torch.no_grad():
        ours = model(input_ids, attention_mask)
        theirs = to_hf_classifier(model)(input_ids=input_ids, attention_mask=attention_mask).logits
        trimmed = model(input_ids[1:2, :25], attention_mask[1:2, :25])  # what the collator's cut batches see
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(trimmed, ours[1:2], atol=1e-5, rtol=1e-5)
    assert ours.std(dim=0).min() > 1e-3  # the inputs give different logits (no trivially equal outputs)

    checkpoint = tmp_path / "ep1-ba5-rank0.pt"
    composer_model = ComposerPerceiverClassifier(model)
    description = {"config": to_dict(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=3))),
                   "tokenizer_fingerprint": tokenizer_fingerprint, "labels": ["negative", "neutral", "positive"]}
    torch.save({"state": {"model": composer_model.state_dict(), "callbacks": {"RunDescription": description}}},
               checkpoint)
    out = export(checkpoint, tmp_path / "hf")
    exported = PerceiverForSequenceClassification.from_pretrained(out).eval()
    assert exported.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=input_ids, attention_mask=attention_mask).logits, ours,
                                   atol=1e-5, rtol=1e-5)
    classify = pipeline("text-classification", model=str(out), device=-1)
    encoded = classify.tokenizer("A gripping film.", return_tensors="pt")  # as the pipeline encodes it
    with torch.no_grad():
        probabilities = model(encoded["input_ids"], encoded["attention_mask"])[0].softmax(-1)
    (predicted,) = classify("A gripping film.")
    assert predicted["label"] == ["negative", "neutral", "positive"][int(probabilities.argmax())]
    assert abs(predicted["score"] - float(probabilities.max())) < 1e-5


def test_an_mlm_checkpoint_loads_bitwise_and_a_fresh_encoder_is_an_untrained_mlm(mlm_checkpoint):
    path, mlm, weights, tokenizer_fingerprint = mlm_checkpoint
    cfg = classifier_config(mlm, f"model.encoder_from={path}")
    model = initial_classifier(cfg.model, 2, (tokenizer_fingerprint,))
    assert_encoder_equal(model, weights)
    assert all(p.requires_grad for p in model.parameters())

    fresh_cfg = classifier_config(mlm)
    torch.manual_seed(5)
    fresh = initial_classifier(fresh_cfg.model, 2, (tokenizer_fingerprint,))
    torch.manual_seed(5)
    from perceiver_stream.model.config import mlm_config_for
    from perceiver_stream.model.mlm import PerceiverMLM

    assert_encoder_equal(fresh, PerceiverMLM(mlm_config_for(fresh_cfg.model)).state_dict())


def test_frozen_encoder_takes_no_gradient(mlm_checkpoint):
    path, mlm, weights, tokenizer_fingerprint = mlm_checkpoint
    cfg = classifier_config(mlm, f"model.encoder_from={path}", "model.freeze_encoder=true")
    model = initial_classifier(cfg.model, 2, (tokenizer_fingerprint,))
    frozen = {id(p) for p in model.encoder_parameters()}
    assert all(p.requires_grad == (id(p) not in frozen) for p in model.parameters())
    logits = model(torch.randint(7, 32000, (2, 16)))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert all(p.grad is None for p in model.encoder_parameters())
    assert all(p.grad is not None for p in model.decoder.parameters())


def test_sharded_and_transformers_checkpoints_load_bitwise(mlm_checkpoint, tmp_path):
    path, mlm, weights, tokenizer_fingerprint = mlm_checkpoint
    state = torch.load(path, weights_only=False)
    sharded = tmp_path / "ep0-ba10"  # the directory torch.distributed.checkpoint writes for sharded checkpoints
    dcp.save(state, checkpoint_id=sharded, no_dist=True)
    model = initial_classifier(classifier_config(mlm, f"model.encoder_from={sharded}").model, 2,
                               (tokenizer_fingerprint,))
    assert_encoder_equal(model, weights)

    from perceiver_stream.export import load_checkpoint_model

    hf_dir = tmp_path / "hf"
    to_hf(load_checkpoint_model(path, mlm.model)).save_pretrained(hf_dir)
    AutoTokenizer.from_pretrained(mlm.data.tokenizer).save_pretrained(hf_dir)
    model = initial_classifier(classifier_config(mlm, f"model.encoder_from={hf_dir}").model, 2,
                               (tokenizer_fingerprint,))
    assert_encoder_equal(model, weights)


def test_a_classifier_checkpoint_brings_its_decoder(mlm_checkpoint, tmp_path):
    path, mlm, _, tokenizer_fingerprint = mlm_checkpoint
    cfg = classifier_config(mlm, f"model.encoder_from={path}")
    first = initial_classifier(cfg.model, 2, (tokenizer_fingerprint,))
    with torch.no_grad():
        for param in first.parameters():
            param.add_(0.5)
    checkpoint = tmp_path / "ep2-ba9-rank0.pt"
    description = {"config": to_dict(cfg), "tokenizer_fingerprint": tokenizer_fingerprint, "labels": ["a", "b"]}
    torch.save({"state": {"model": ComposerPerceiverClassifier(first).state_dict(),
                          "callbacks": {"RunDescription": description}}}, checkpoint)
    second = initial_classifier(classifier_config(mlm, f"model.encoder_from={checkpoint}").model, 2,
                                (tokenizer_fingerprint,))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(),
                                                   strict=True))
    with pytest.raises(ConfigError, match="a classifier of 2 classes, the shards have 5 labels"):
        initial_classifier(classifier_config(mlm, f"model.encoder_from={checkpoint}").model, 5,
                           (tokenizer_fingerprint,))


@pytest.mark.parametrize("override, message", [
    ("model.num_latent_channels=192", "model.num_latent_channels=192 but {path} has 128"),
    ("model.encoder.num_self_attention_layers_per_block=3",
     "model.encoder.num_self_attention_layers_per_block=3 but {path} has 2"),
])
def test_an_encoder_of_another_shape_is_named(mlm_checkpoint, override, message):
    path, mlm, _, tokenizer_fingerprint = mlm_checkpoint
    cfg = classifier_config(mlm, f"model.encoder_from={path}", override)
    with pytest.raises(ConfigError) as error:
        initial_classifier(cfg.model, 2, (tokenizer_fingerprint,))
    assert message.format(path=path) in str(error.value) and "\n" not in str(error.value)
    key, _, value = message.format(path=path).split(" but ")[0].partition("=")
    pretrained = message.rsplit(" has ", 1)[1]
    assert str(error.value).endswith(f"; set them as in pretraining: {key}={pretrained}")  # ready to paste


def test_an_encoder_of_another_tokenizer_is_refused(mlm_checkpoint, tmp_path):
    path, mlm, _, _ = mlm_checkpoint
    cfg = classifier_config(mlm, f"model.encoder_from={path}")
    with pytest.raises(ConfigError, match="was trained with another tokenizer than data.tokenizer"):
        initial_classifier(cfg.model, 2, ("a fingerprint of another tokenizer", "and its earlier one"))
    with pytest.raises(ConfigError, match="no such checkpoint or directory"):
        initial_classifier(classifier_config(mlm, f"model.encoder_from={tmp_path}/nothing").model, 2, ("x",))
