"""Local, ordered attention at initialisation: what it promises, measured on the attention weights it produces."""

from __future__ import annotations

import torch

from perceiver_stream.model import DecoderConfig, EncoderConfig, PerceiverMLM
from perceiver_stream.model.hf import from_hf, to_hf
from perceiver_stream.model.local_init import position_code, rotation
from tests.model.test_model import random_batch, small_config


def attention_weights(layer, x_q: torch.Tensor, x_kv: torch.Tensor) -> torch.Tensor:
    """(heads, Nq, Nkv) attention probabilities of a cross-attention layer, computed from its weights."""
    attention = layer.attention
    q, k = attention.q_proj(layer.q_norm(x_q)), attention.k_proj(layer.kv_norm(x_kv))
    heads = attention.num_heads
    q, k = (t.view(len(t), heads, -1).transpose(0, 1) for t in (q, k))
    return (q @ k.transpose(1, 2) / q.shape[-1] ** 0.5).softmax(-1)


def blueprint_like(**overrides):
    """The blueprint's head width (qk 256 / 8 heads = 32 channels, room for 16 code pairs) and its stride of
    two positions per latent, at 128 positions."""
    encoder = EncoderConfig(num_input_channels=64, num_cross_attention_qk_channels=256, num_cross_attention_heads=8,
                            num_self_attention_qk_channels=64, num_self_attention_heads=4,
                            num_self_attention_layers_per_block=2)
    decoder = DecoderConfig(num_cross_attention_qk_channels=256, num_cross_attention_v_channels=64,
                            num_cross_attention_heads=8)
    return small_config(max_seq_len=128, num_latents=64, num_latent_channels=128, encoder=encoder, decoder=decoder,
                        **overrides)


@torch.no_grad()
def test_each_encoder_head_reads_one_position_in_order_and_queries_read_their_latent():
    torch.manual_seed(0)
    model = PerceiverMLM(blueprint_like(local_init=True))
    inputs, _ = model.input_adapter(torch.randint(model.config.vocab_size, (1, 128)))
    encoder = attention_weights(model.encoder.cross_attention, model.encoder.latents, inputs[0])  # (8, 64, 128)
    inner = slice(2, 62)  # latents whose 8 positions 2j-3 ... 2j+4 are all inside the sequence
    expected = 2 * torch.arange(64)[None, :] + torch.arange(-3, 5)[:, None]
    # the token's share of the key's code channels moves a few peaks by one position
    assert (encoder.argmax(-1)[:, inner] == expected[:, inner]).float().mean() > 0.95
    assert encoder.max(-1).values[:, inner].mean() > 0.9
    decoder = attention_weights(model.decoder.cross_attention, model.decoder.output_queries, model.encoder(inputs)[0])
    error = (decoder[-1].argmax(-1) - torch.arange(128) // 2).abs()  # the sharpest head reads p's latent
    assert (error == 0).float().mean() > 0.9 and (error <= 1).float().mean() > 0.97
    # the paper's initialisation spreads every head's attention over the whole sequence
    torch.manual_seed(0)
    plain = PerceiverMLM(blueprint_like(local_init=False))
    inputs, _ = plain.input_adapter(torch.randint(plain.config.vocab_size, (1, 128)))
    assert attention_weights(plain.encoder.cross_attention, plain.encoder.latents, inputs[0]).max() < 2 / 128


@torch.no_grad()
def test_latent_self_attention_layers_start_as_the_identity():
    torch.manual_seed(0)
    model = PerceiverMLM(blueprint_like(local_init=True))
    latents = torch.randn(2, 64, 128)
    for layer in model.encoder.self_attention:
        assert torch.equal(layer(latents), latents)


def test_rotation_shifts_the_code_by_the_offset():
    positions = torch.arange(100, dtype=torch.float64)
    for offset in (-3.5, 1.0, 2.5):
        torch.testing.assert_close(position_code(positions, 32, 128) @ rotation(offset, 32, 128).T,
                                   position_code(positions + offset, 32, 128))


def test_position_code_resolves_single_positions():
    code = position_code(torch.arange(128), 32, 128)
    similarity = (code @ code.T) / 16  # 1 at the same position
    torch.testing.assert_close(similarity.diagonal(), torch.ones(128, dtype=torch.float64))
    off_diagonal = similarity - torch.eye(128, dtype=torch.float64)
    assert off_diagonal.max() < 0.7  # at peak logit 30 a neighbour gets < e^-9 of the peak's weight


@torch.no_grad()
def test_only_initial_values_change_and_export_stays_exact():
    torch.manual_seed(0)
    local = PerceiverMLM(small_config(local_init=True)).eval()
    plain = PerceiverMLM(small_config(local_init=False)).eval()
    assert [(n, p.shape) for n, p in local.named_parameters()] == [(n, p.shape) for n, p in plain.named_parameters()]
    hf = to_hf(local)
    input_ids, attention_mask, _ = random_batch(local.config)
    torch.testing.assert_close(hf(inputs=input_ids, attention_mask=attention_mask).logits,
                               local(input_ids, attention_mask), atol=1e-5, rtol=1e-5)
    for (name, a), b in zip(local.state_dict().items(), from_hf(hf).state_dict().values(), strict=True):
        assert torch.equal(a, b), name
