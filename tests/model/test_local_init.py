"""Local attention at initialisation: what it promises, measured on the attention weights it produces."""

from __future__ import annotations

import torch

from perceiver_stream.model import EncoderConfig, PerceiverMLM
from perceiver_stream.model.hf import from_hf, to_hf
from perceiver_stream.model.local_init import position_code
from tests.model.test_model import random_batch, small_config


def attention_weights(layer, x_q: torch.Tensor, x_kv: torch.Tensor) -> torch.Tensor:
    """(heads, Nq, Nkv) attention probabilities of a cross-attention layer, computed from its weights."""
    attention = layer.attention
    q, k = attention.q_proj(layer.q_norm(x_q)), attention.k_proj(layer.kv_norm(x_kv))
    heads = attention.num_heads
    q, k = (t.view(len(t), heads, -1).transpose(0, 1) for t in (q, k))
    return (q @ k.transpose(1, 2) / q.shape[-1] ** 0.5).softmax(-1)


def centres(num: int) -> torch.Tensor:
    return (torch.arange(num) + 0.5) / num


@torch.no_grad()
def test_latents_and_output_queries_attend_around_their_own_position():
    # heads 32 channels wide, as in the blueprint (qk 256 / 8 heads): room for a 16-frequency code
    encoder_config = EncoderConfig(num_input_channels=48, num_cross_attention_qk_channels=64,
                                   num_cross_attention_heads=2, num_self_attention_qk_channels=32,
                                   num_self_attention_heads=4, num_self_attention_layers_per_block=2)
    config = small_config(max_seq_len=64, num_latents=16, encoder=encoder_config, local_init=True)
    torch.manual_seed(0)
    model = PerceiverMLM(config)
    input_ids = torch.randint(config.vocab_size, (1, config.max_seq_len))
    inputs, _ = model.input_adapter(input_ids)
    encoder = attention_weights(model.encoder.cross_attention, model.encoder.latents, inputs[0])
    latents = model.encoder(inputs)[0]
    decoder = attention_weights(model.decoder.cross_attention, model.decoder.output_queries, latents)
    for weights, queries, keys in ((encoder, 16, 64), (decoder, 64, 16)):
        # the sharpest head peaks within one cell (of the coarser grid) of the query's centre; on average over
        # heads the attended position (expected value, as a fraction of the sequence) is near it
        assert ((weights[-1].argmax(-1) + 0.5) / keys - centres(queries)).abs().max() <= 1 / min(queries, keys)
        assert ((weights @ centres(keys)) - centres(queries)).abs().mean() < 0.1
    # sharper heads put more weight on their peak; the paper's initialisation spreads it evenly
    peak = encoder.max(-1).values.mean(-1)
    assert peak[-1] > peak[0] > 2 / 64
    torch.manual_seed(0)
    plain = PerceiverMLM(small_config(max_seq_len=64, num_latents=16, encoder=encoder_config))
    plain_inputs = plain.input_adapter(input_ids)[0][0]
    uniform = attention_weights(plain.encoder.cross_attention, plain.encoder.latents, plain_inputs)
    assert uniform.max() < 2 / 64
    assert ((uniform @ centres(64)) - centres(16)).abs().mean() > 0.2


def test_position_code_dot_product_peaks_at_the_same_position():
    code = position_code(32, 16)
    similarity = code @ code.T
    assert torch.equal(similarity.argmax(-1), torch.arange(32))
    torch.testing.assert_close(similarity.diagonal(), torch.full((32,), 8.0, dtype=torch.float64))


@torch.no_grad()
def test_only_initial_values_change_and_export_stays_exact():
    torch.manual_seed(0)
    local = PerceiverMLM(small_config(local_init=True)).eval()
    plain = PerceiverMLM(small_config()).eval()
    assert [(n, p.shape) for n, p in local.named_parameters()] == [(n, p.shape) for n, p in plain.named_parameters()]
    hf = to_hf(local)
    input_ids, attention_mask, _ = random_batch(local.config)
    torch.testing.assert_close(hf(inputs=input_ids, attention_mask=attention_mask).logits,
                               local(input_ids, attention_mask), atol=1e-5, rtol=1e-5)
    for (name, a), b in zip(local.state_dict().items(), from_hf(hf).state_dict().values(), strict=True):
        assert torch.equal(a, b), name
