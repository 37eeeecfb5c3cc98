"""Our Lamb: the update of torch_optimizer.Lamb, exact under FSDP2 sharding, checkpointable."""

from __future__ import annotations

import json
import socket

import pytest
import torch
import torch_optimizer

from perceiver_stream.model import PerceiverMLM
from perceiver_stream.optim import Lamb, OptimizerConfig, build_optimizer, param_groups
from perceiver_stream.optim import fused as fused_kernels
from tests.model.test_model import small_config


def twin_models() -> tuple[PerceiverMLM, PerceiverMLM]:
    torch.manual_seed(0)
    a, b = PerceiverMLM(small_config()), PerceiverMLM(small_config())
    b.load_state_dict(a.state_dict())
    return a, b


def set_random_grads(models, generator: torch.Generator) -> None:
    for params in zip(*(m.parameters() for m in models), strict=True):
        grad = torch.randn(params[0].shape, generator=generator) * 0.1
        for p in params:
            p.grad = grad.clone()


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("debias", [False, True])
@pytest.mark.parametrize("adam", [False, True])
def test_matches_torch_optimizer_lamb(debias, adam, fused, monkeypatch):
    ours_model, ref_model = twin_models()
    # the fused step compiles the passes for tensors of MIN_ELEMENTS or more, the rest take _foreach: both here
    monkeypatch.setattr(fused_kernels, "MIN_ELEMENTS", 4096)
    numels = [p.numel() for p in ours_model.parameters()]
    assert min(numels) < fused_kernels.MIN_ELEMENTS <= max(numels)
    initial = [p.detach().clone() for p in ours_model.parameters()]
    groups = param_groups(ours_model, 0.01, ["latents"])
    ref_groups = param_groups(ref_model, 0.01, ["latents"])
    ours = Lamb(groups, lr=0.01, debias=debias, adam=adam, fused=fused)
    reference = torch_optimizer.Lamb(ref_groups, lr=0.01, debias=debias, adam=adam)
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        set_random_grads((ours_model, ref_model), generator)
        ours.step()
        reference.step()
    for (name, p), q, start in zip(ours_model.named_parameters(), ref_model.parameters(), initial, strict=True):
        assert ((p - q).norm() / q.norm()).item() < 1e-6, name
        assert (p - q).abs().max().item() <= 1e-6 * q.abs().max().item(), name
        assert not torch.equal(p, start), name


def test_trust_ratio_is_one_for_zero_weights():
    p = torch.nn.Parameter(torch.zeros(4, 4))
    q = torch.nn.Parameter(torch.zeros(4, 4))
    p.grad = torch.ones(4, 4)
    q.grad = torch.ones(4, 4)
    Lamb([p], lr=0.1).step()
    torch_optimizer.Lamb([q], lr=0.1).step()
    torch.testing.assert_close(p, q)
    assert p.abs().sum() > 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_exact_under_fsdp2_and_fsdp1_sharding_where_torch_optimizer_lamb_on_shards_is_not(tmp_path):
    from tests.train.forked import train

    out = tmp_path / "diffs.json"
    result = train([out], 2, entry="tests.optim.fsdp_worker:main")
    assert result.returncode == 0, result.stderr[-3000:]
    diffs = json.loads(out.read_text())
    # as close to the single-process run as AdamW under the same sharding (float64 reduction-order noise) ...
    assert diffs["ours"] <= 2 * diffs["adamw"] + 1e-15
    assert diffs["ours"] < 1e-12
    # ... while torch_optimizer.Lamb on the plain local shards (FSDP1 use_orig_params) uses the trust ratios
    # of shards and is at least 10x further off (in practice ~1e13x)
    assert diffs["torch_optimizer_local_shards"] >= 10 * max(diffs["ours"], diffs["adamw"], 1e-12)
    # on DTensors torch.norm all-reduces per parameter: exact, but two blocking collectives per parameter
    assert diffs["torch_optimizer_dtensor"] < 1e-12
    # ours on FSDP1-style flat local slices with process_group="world", some of them empty: exact too
    assert diffs["ours_flat_shards"] < 1e-12
    # the compiled two-pass update, sharded both ways, against the single-process _foreach update
    assert diffs["ours_fused"] < 1e-12 and diffs["ours_flat_shards_fused"] < 1e-12


def test_state_save_and_load_continues_bit_identically(tmp_path):
    generator = torch.Generator().manual_seed(2)
    grads = [[torch.randn(p.shape, generator=generator) * 0.1 for p in twin_models()[0].parameters()]
             for _ in range(10)]

    def run(model, optimizer, steps) -> None:
        for step_grads in steps:
            for p, g in zip(model.parameters(), step_grads, strict=True):
                p.grad = g.clone()
            optimizer.step()

    continuous, _ = twin_models()
    optimizer = Lamb(continuous.parameters(), lr=0.01, weight_decay=0.01, debias=True)
    run(continuous, optimizer, grads)

    first, resumed = twin_models()
    optimizer = Lamb(first.parameters(), lr=0.01, weight_decay=0.01, debias=True)
    run(first, optimizer, grads[:5])
    path = tmp_path / "ckpt.pt"
    torch.save({"model": first.state_dict(), "optimizer": optimizer.state_dict()}, path)
    checkpoint = torch.load(path, weights_only=True)
    resumed.load_state_dict(checkpoint["model"])
    optimizer = Lamb(resumed.parameters(), lr=0.01, weight_decay=0.01, debias=True)
    optimizer.load_state_dict(checkpoint["optimizer"])
    run(resumed, optimizer, grads[5:])
    for p, q in zip(continuous.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_weight_decay_groups():
    model = PerceiverMLM(small_config())
    decay, no_decay = param_groups(model, 0.01, OptimizerConfig().no_weight_decay)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "input_adapter.token_embedding.weight" in decayed
    assert "encoder.self_attention.0.attention.q_proj.weight" in decayed
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert {"encoder.latents", "decoder.output_queries", "input_adapter.position_embedding.weight",
            "output_bias", "encoder.self_attention.0.mlp.0.weight",
            "encoder.cross_attention.q_norm.bias"} <= not_decayed
    assert decayed.isdisjoint(not_decayed) and len(decayed) + len(not_decayed) == len(names)
    assert no_decay["weight_decay"] == 0.0


def test_build_optimizer_from_config():
    model = PerceiverMLM(small_config())
    optimizer = build_optimizer(model, OptimizerConfig(lr=0.00125, weight_decay=0.01))
    assert isinstance(optimizer, Lamb)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    assert optimizer.param_groups[0]["lr"] == 0.00125
    with pytest.raises(ValueError, match="optimizer.name='sgd'"):
        OptimizerConfig(name="sgd")


def test_adam_params_take_adams_update_at_their_own_rate():
    """``optimizer.adam_params``: the token embedding steps by Adam's rule (trust ratio 1) at ``adam_lr``; every
    other parameter by Lamb's, exactly as without the key."""
    torch.manual_seed(0)
    model, reference = PerceiverMLM(small_config()), PerceiverMLM(small_config())
    reference.load_state_dict(model.state_dict())
    config = OptimizerConfig(lr=0.01, weight_decay=0.01, adam_params=["token_embedding"], adam_lr=0.002)
    optimizer = build_optimizer(model, config)
    reference_optimizer = build_optimizer(reference, OptimizerConfig(lr=0.01, weight_decay=0.01))
    assert [(g["adam"], g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [
        (False, 0.01, 0.01), (True, 0.002, 0.01), (False, 0.01, 0.0)]
    embedding = model.input_adapter.token_embedding.weight
    before = embedding.detach().clone()
    for m, opt in ((model, optimizer), (reference, reference_optimizer)):
        torch.manual_seed(1)
        for p in m.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
    grad = embedding.grad
    beta1, beta2 = config.betas
    update = (1 - beta1) * grad / (((1 - beta2) * grad.square()).sqrt() + config.eps) + 0.01 * before
    torch.testing.assert_close(embedding.detach(), before - 0.002 * update, rtol=1e-6, atol=1e-7)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        if "token_embedding" not in name:
            assert torch.equal(p, q), name
    with pytest.raises(ValueError, match="optimizer.adam_params applies to Lamb"):
        OptimizerConfig(name="adamw", adam_params=["token_embedding"])
