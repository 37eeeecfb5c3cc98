"""Linear probes (``perceiver_stream.probe``, ``callbacks.probes``): the regression finds a rule where there is one and
none in noise, without touching the random state; a document's features do not depend on its batch; bad probe
directories are one-line errors; and a pretraining run logs its probes on real BBC News articles at every
evaluation, the first one included, and trains what it would without them."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from perceiver_stream.checkpoint import model_weights, read_checkpoint
from perceiver_stream.config import ConfigError, load
from perceiver_stream.data.format import PADDING
from perceiver_stream.data.tokenizer import fingerprints, load_tokenizer
from perceiver_stream.model import PerceiverMLM
from perceiver_stream.probe import LabelledSamples, latent_features, logistic_regression, read_probe_task
from perceiver_stream.train.config import build_train_config
from tests.conftest import REPO, shared_path
from tests.train.conftest import TINY, tiny_overrides
from tests.train.forked import train


def tokenizer_settings(name: str = "xlnet-base-cased") -> dict:
    """``read_probe_task``'s tokenizer keywords for a run with ``data.tokenizer`` the shared ``name``."""
    path = str(shared_path(f"tokenizers/{name}"))
    tokenizer = load_tokenizer(path)
    return {"tokenizer": path, "tokenizer_fingerprints": fingerprints(tokenizer), "vocab_size": len(tokenizer)}


def random_state() -> tuple:
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def test_logistic_regression_finds_a_linear_rule_and_no_rule_in_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 20))
    rule = (x @ rng.normal(size=20) > 0).astype(np.int64)
    noise = rng.integers(0, 2, 1200)
    x = torch.from_numpy(x).float()
    before = random_state()
    separable = logistic_regression(x[:800], rule[:800], x[800:], rule[800:], 2, seed=0)
    chance = logistic_regression(x[:800], noise[:800], x[800:], noise[800:], 2, seed=0)
    after = random_state()
    assert separable["accuracy"] > 0.95, separable
    assert abs(chance["accuracy"] - 0.5) < 0.08, chance  # 400 val rows: chance's standard error is 0.025
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2]
    # every rank of a run fits the same regression to the same features
    assert logistic_regression(x[:800], rule[:800], x[800:], rule[800:], 2, seed=0) == separable


def test_a_documents_features_do_not_depend_on_its_batch(rotten_tomatoes):
    task = read_probe_task("rt", str(rotten_tomatoes), **tokenizer_settings(), max_seq_len=128, train_samples=48,
                           seed=0)
    samples = task.train
    lengths = (samples.types != PADDING).sum(1)
    assert len(samples.labels) == 48 and lengths.min() < lengths.max() < 128  # padded, unevenly
    torch.manual_seed(0)
    model = PerceiverMLM(build_train_config(load(TINY, [])).model).eval()

    def latents(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model(ids, mask, latents_only=True)

    together = latent_features(latents, samples, batch_size=48)
    alone = torch.cat([latent_features(latents, LabelledSamples(samples.ids[i:i + 1], samples.types[i:i + 1],
                                                                samples.labels[i:i + 1]), batch_size=1)
                       for i in range(48)])
    assert together.shape == (48, 2 * model.config.num_latent_channels)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["missing", "unlabelled", "tokenizer", "max_seq_len"])
def test_a_bad_probe_directory_is_named(case, rotten_tomatoes, tiny_shards, tmp_path):
    path, settings = rotten_tomatoes, {**tokenizer_settings(), "max_seq_len": 128}
    expected = {"missing": f"callbacks.probes.rt={tmp_path}: no {tmp_path}/train/manifest.json; convert labelled text "
                           "with perceiver-convert labelled",
                "unlabelled": f"callbacks.probes.rt={tiny_shards / 'wikipedia'}: {tiny_shards / 'wikipedia'}/train "
                              "holds no labels",
                "tokenizer": f"callbacks.probes.rt={rotten_tomatoes}: shards have tokenizer fingerprint",
                "max_seq_len": f"callbacks.probes.rt={rotten_tomatoes}: shards have max_seq_len 128 (tokenizer "
                               f"'{shared_path('tokenizers/xlnet-base-cased')}') but the configuration has 512"}[case]
    if case == "missing":
        path = tmp_path
    elif case == "unlabelled":
        path = tiny_shards / "wikipedia"
    elif case == "tokenizer":
        settings.update(tokenizer_settings("bert-base-uncased"))
    else:
        settings["max_seq_len"] = 512
    with pytest.raises(ConfigError) as error:
        read_probe_task("rt", str(path), **settings, train_samples=100, seed=0)
    assert str(error.value).startswith(expected) and "\n" not in str(error.value), str(error.value)


def test_probes_belong_to_pretraining():
    with pytest.raises(ConfigError, match=r"^callbacks.probes: linear probes measure a pretraining run's encoder"):
        build_train_config(load(str(REPO / "yamls" / "clf_rotten_tomatoes.yaml"), ["callbacks.probes.rt=x"]))


@pytest.mark.slow
def test_a_pretraining_run_logs_its_probes_at_every_evaluation_and_trains_what_it_would_without(
        tiny_shards, bbc_news_quarter, tmp_path):
    """On 556 real BBC News articles (five topics), the probe of a fresh encoder already finds the topics well above
    the majority class (a random projection of the pieces keeps the words that tell a topic). The same run without
    the probe ends with bitwise the same weights."""
    weights = {}
    for name, probes in (("with", {"callbacks.probes.bbc": bbc_news_quarter}), ("without", {})):
        overrides = tiny_overrides(tiny_shards, tmp_path / name, max_duration="2ba", eval_interval="2ba",
                                   eval_first="true", eval_subset_num_batches=1, save_folder=tmp_path / name / "ckpt",
                                   save_interval="2ba", **probes)
        result = train([TINY, *overrides])
        assert result.returncode == 0, result.stderr[-3000:]
        weights[name] = model_weights(read_checkpoint(tmp_path / name / "ckpt" / "ep0-ba2-rank0.pt"))
    assert weights["with"].keys() == weights["without"].keys()
    assert all(torch.equal(weights["with"][key], weights["without"][key]) for key in weights["with"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((tmp_path / "with" / "tb").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    accuracy, majority = (events.Scalars(f"metrics/probe/bbc/{name}") for name in ("accuracy", "majority"))
    assert [e.step for e in accuracy] == [e.step for e in majority] == [0, 2]
    task = read_probe_task("bbc", str(bbc_news_quarter), **tokenizer_settings(), max_seq_len=128, train_samples=4096,
                           seed=17)
    assert len(task.labels) == 5 and all(e.value == pytest.approx(task.majority) for e in majority)
    print([round(e.value, 4) for e in accuracy], task.majority)
    assert all(e.value > 1.3 * task.majority for e in accuracy)
