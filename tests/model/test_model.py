"""The Perceiver IO MLM: architecture, weight import, attention, labelled-only decoding, checkpointing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from transformers import PerceiverConfig, PerceiverForMaskedLM

from perceiver_stream.model import DecoderConfig, EncoderConfig, PerceiverMLM, PerceiverMLMConfig
from perceiver_stream.model.composer_model import ComposerPerceiverMLM
from perceiver_stream.model.hf import from_hf, hf_name, to_hf, to_hf_config
from perceiver_stream.model.modules import CrossAttentionLayer, SelfAttentionLayer


def small_config(**overrides) -> PerceiverMLMConfig:
    """A config transformers can express (decoder qk 256, 8 heads), small enough for CPU tests."""
    config = dict(
        vocab_size=300, max_seq_len=32, num_latents=8, num_latent_channels=64,
        encoder=EncoderConfig(
            num_input_channels=48, num_cross_attention_qk_channels=32, num_cross_attention_v_channels=64,
            num_cross_attention_heads=4, num_self_attention_qk_channels=32, num_self_attention_v_channels=64,
            num_self_attention_heads=4, num_self_attention_layers_per_block=3, num_self_attention_blocks=2,
        ),
        decoder=DecoderConfig(num_cross_attention_qk_channels=256, num_cross_attention_v_channels=48,
                              num_cross_attention_heads=8),
    )
    config.update(overrides)
    return PerceiverMLMConfig(**config)


def random_batch(config: PerceiverMLMConfig, batch: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, config.vocab_size, (batch, config.max_seq_len), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 20:] = 0
    attention_mask[3, 5:] = 0
    labels = torch.where(torch.rand(input_ids.shape, generator=g) < 0.15, input_ids, -100)
    labels[attention_mask == 0] = -100
    labels[0, 3] = input_ids[0, 3]
    return input_ids, attention_mask, labels


def test_base_parameter_count_equals_transformers():
    with torch.device("meta"):
        ours = PerceiverMLM(PerceiverMLMConfig(vocab_size=32000, max_seq_len=512))
        hf = PerceiverForMaskedLM(
            PerceiverConfig(vocab_size=32000, max_position_embeddings=512, qk_channels=256, v_channels=1280)
        )
    ours_count = sum(p.numel() for p in ours.parameters())
    assert ours_count == sum(p.numel() for p in hf.parameters())
    assert ours_count == 223_155_456


def test_base_config_is_expressible_in_transformers():
    hf_config = to_hf_config(PerceiverMLMConfig())
    assert (hf_config.d_latents, hf_config.d_model, hf_config.num_self_attends_per_block) == (1280, 768, 26)


def test_weight_import_from_transformers_matches_logits():
    torch.manual_seed(0)
    hf = PerceiverForMaskedLM(to_hf_config(small_config())).eval()
    ours = from_hf(hf).eval()
    input_ids, attention_mask, _ = random_batch(ours.config)
    expected = hf(inputs=input_ids, attention_mask=attention_mask).logits
    actual = ours(input_ids, attention_mask)
    real = attention_mask.bool()
    torch.testing.assert_close(actual[real], expected[real], atol=1e-5, rtol=1e-5)


def test_export_to_transformers_round_trips():
    torch.manual_seed(1)
    ours = PerceiverMLM(small_config()).eval()
    hf = to_hf(ours)
    input_ids, attention_mask, _ = random_batch(ours.config)
    torch.testing.assert_close(
        hf(inputs=input_ids, attention_mask=attention_mask).logits, ours(input_ids, attention_mask),
        atol=1e-5, rtol=1e-5,
    )
    back = from_hf(hf)
    for (name, a), b in zip(ours.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_unexpressible_config_is_refused_with_reason():
    config = small_config(decoder=DecoderConfig(num_cross_attention_qk_channels=64, num_cross_attention_v_channels=48))
    with pytest.raises(ValueError, match="decoder.num_cross_attention_qk_channels == 256"):
        to_hf_config(config)


def test_attention_goes_through_sdpa(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(kwargs.get("attn_mask") is not None)
        return sdpa(*args, **kwargs)

    config = small_config()
    model = PerceiverMLM(config).eval()  # (local_init's calibration runs the encoder once)
    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    input_ids, attention_mask, _ = random_batch(config)
    model(input_ids, attention_mask)
    layers = config.encoder.num_self_attention_layers_per_block * config.encoder.num_self_attention_blocks
    # encoder cross-attention (masked) + latent self-attention + decoder cross-attention
    assert calls == [True] + [False] * layers + [False]


def test_padding_never_changes_real_positions():
    config = small_config()
    model = PerceiverMLM(config).eval()
    input_ids, attention_mask, _ = random_batch(config)
    other = input_ids.clone()
    other[attention_mask == 0] = (other[attention_mask == 0] + 7) % config.vocab_size
    real = attention_mask.bool()
    torch.testing.assert_close(model(other, attention_mask)[real], model(input_ids, attention_mask)[real],
                               atol=0, rtol=0)
    assert not torch.allclose(model(other)[1, :20], model(input_ids)[1, :20])


def _gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Gradients by parameter name, with checkpoint wrappers' name component removed."""
    return {name.replace("._checkpoint_wrapped_module", ""): p.grad.clone() for name, p in model.named_parameters()}


def test_labelled_decoding_equals_full_decode():
    config = small_config()
    torch.manual_seed(2)
    model = PerceiverMLM(config)
    input_ids, attention_mask, labels = random_batch(config)

    full_loss = F.cross_entropy(model(input_ids, attention_mask).flatten(0, 1), labels.flatten())
    full_loss.backward()
    full_grads = _gradients(model)
    model.zero_grad()

    out = model(input_ids, attention_mask, labels=labels)
    assert out.logits.shape == (int((labels != -100).sum()), config.vocab_size)
    assert torch.equal(out.targets, labels[labels != -100])
    loss = F.cross_entropy(out.logits, out.targets)
    loss.backward()
    torch.testing.assert_close(loss, full_loss, atol=1e-6, rtol=1e-6)
    for name, grad in _gradients(model).items():
        torch.testing.assert_close(grad, full_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_gradients_equal_transformers():
    """Labelled-only decoding and the tied head's single gradient give transformers' loss and gradients."""
    torch.manual_seed(4)
    hf = PerceiverForMaskedLM(to_hf_config(small_config())).eval()  # eval: no dropout in either model
    ours = from_hf(hf).eval()
    input_ids, attention_mask, labels = random_batch(ours.config)
    hf_loss = hf(inputs=input_ids, attention_mask=attention_mask, labels=labels).loss
    hf_loss.backward()
    out = ours(input_ids, attention_mask, labels=labels)
    loss = F.cross_entropy(out.logits, out.targets)
    loss.backward()
    torch.testing.assert_close(loss, hf_loss, atol=1e-6, rtol=1e-6)
    hf_grads = {name: p.grad for name, p in hf.named_parameters()}
    for name, grad in _gradients(ours).items():
        torch.testing.assert_close(grad, hf_grads[hf_name(name)], atol=1e-6, rtol=1e-4, msg=name)


def _saved_bytes_and_grads(model: ComposerPerceiverMLM, batch: dict) -> tuple[int, torch.Tensor, dict]:
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model.loss(model(batch), batch)
    loss.backward()
    return sum(saved), loss.detach(), _gradients(model.model)


def test_activation_checkpointing_is_real_and_exact():
    config = small_config(max_seq_len=128)
    input_ids, attention_mask, labels = random_batch(config, batch=8)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    torch.manual_seed(3)
    plain = ComposerPerceiverMLM(config, mask_token_id=6)
    torch.manual_seed(3)
    checkpointed = ComposerPerceiverMLM(small_config(max_seq_len=128, activation_checkpointing=True), mask_token_id=6)

    layers = [m for m in checkpointed.model.modules() if isinstance(m, (CrossAttentionLayer, SelfAttentionLayer))]
    wrapped = [m for m in checkpointed.model.modules() if isinstance(m, CheckpointWrapper)]
    assert len(layers) == 2 + config.encoder.num_self_attention_layers_per_block
    assert sorted(id(w._checkpoint_wrapped_module) for w in wrapped) == sorted(id(m) for m in layers)

    bytes_plain, loss_plain, grads_plain = _saved_bytes_and_grads(plain, batch)
    bytes_ckpt, loss_ckpt, grads_ckpt = _saved_bytes_and_grads(checkpointed, batch)
    assert torch.equal(loss_plain, loss_ckpt)
    assert grads_plain.keys() == grads_ckpt.keys()
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, atol=0, rtol=0, msg=name)
    assert bytes_ckpt < 0.5 * bytes_plain


def test_offloading_requires_checkpointing():
    with pytest.raises(ValueError, match="activation_offloading=true needs model.activation_checkpointing"):
        small_config(activation_offloading=True)


def test_tied_output_head_shares_the_embedding():
    config = small_config()
    model = PerceiverMLM(config).eval()
    hidden = torch.randn(2, 3, config.encoder.num_input_channels)
    torch.testing.assert_close(model.logits(hidden), hidden @ model.input_adapter.token_embedding.weight.T)


def test_initialisation_scale():
    model = PerceiverMLM(small_config(init_scale=0.05, local_init=False))  # the paper's initialisation
    linear = model.encoder.self_attention[0].mlp[1]
    assert abs(linear.weight.std().item() - 0.05) < 0.005
    assert not linear.bias.any()
    assert abs(model.encoder.latents.std().item() - 0.05) < 0.01


def test_compiled_layers_equal_eager_with_and_without_checkpointing():
    """``model.compile``: every attention layer is compiled, the parameter names are unchanged, and losses and
    gradients equal eager's to float tolerance, over two batches whose labelled widths differ (the decoder's shape
    changes) and under activation checkpointing. Traced with ``aot_eager`` (dynamo, functionalisation, the
    forward/backward partition: what our model can break) rather than inductor, whose C++ code generation alone
    takes minutes on this CPU (``bench/model_step.py --compile`` measures inductor against eager)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    config = small_config()
    batches = []
    for seed in (0, 1):
        input_ids, attention_mask, labels = random_batch(config, seed=seed)
        batches.append({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})
    assert len({int((b["labels"] != -100).sum(1).max()) for b in batches}) == 2
    torch.manual_seed(3)
    eager = ComposerPerceiverMLM(config, mask_token_id=6)
    for checkpointing in (False, True):
        torch.manual_seed(3)
        compiled = ComposerPerceiverMLM(small_config(compile=True, compile_backend="aot_eager",
                                                     activation_checkpointing=checkpointing), mask_token_id=6)
        layers = [m for m in compiled.model.modules() if isinstance(m, (CrossAttentionLayer, SelfAttentionLayer))]
        assert len(layers) == 2 + config.encoder.num_self_attention_layers_per_block
        assert all(layer._compiled_call_impl is not None for layer in layers)  # model.compile compiled them all
        assert compiled.model.state_dict().keys() == eager.model.state_dict().keys()
        for batch in batches:
            loss_eager, grads_eager = _loss_and_grads(eager, batch)
            loss_compiled, grads_compiled = _loss_and_grads(compiled, batch)
            torch.testing.assert_close(loss_compiled, loss_eager, atol=1e-6, rtol=1e-5)
            assert grads_compiled.keys() == grads_eager.keys()
            for name, grad in grads_eager.items():
                torch.testing.assert_close(grads_compiled[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    assert counters["stats"]["unique_graphs"] >= 3  # encoder, latent and decoder layers: traced, not skipped
    assert counters["aot_autograd"]["total"] >= 3  # and each partitioned into forward and backward


def _loss_and_grads(model: ComposerPerceiverMLM, batch: dict) -> tuple[torch.Tensor, dict]:
    model.model.zero_grad(set_to_none=True)
    loss = model.loss(model(batch), batch)
    loss.backward()
    return loss.detach(), _gradients(model.model)
