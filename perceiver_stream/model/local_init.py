"""Local attention at initialisation: an attempt to shorten a Perceiver IO MLM's unigram plateau.

With the paper's Normal(0, 0.02) initialisation every cross-attention is almost uniform: each latent reads
the mean of all input positions and each output query reads the mean of all latents. Every position then gets
the same prediction, the unigram distribution, and the gradient that would make attention position-selective
is tiny because queries and keys are both near zero. The model sits on that plateau for thousands of steps,
longer the more positions and latents there are.

``apply_local_init`` writes a position code into the learned inputs and the attention projections, so that
from step 0 latent ``i`` attends to the input positions around ``(i + 0.5) / N`` of the sequence and output
query ``p`` attends to the latents around its own position. The code is ``F`` sine/cosine pairs,
``c(t) = [cos(pi k t), sin(pi k t)]_{k=1..F}``, whose dot product ``sum_k cos(pi k (t - t'))`` peaks at
``t = t'``. It occupies the first ``2F`` channels of the position embedding, the latents and the output
queries (replacing their random values there) and, in each head of the two cross-attentions, the query/key
projection from those channels (added to the random weights, so content-based attention is still there to
learn). Each head gets its own sharpness: peak logits spaced geometrically from ``PEAK_LOGITS[0]`` to
``PEAK_LOGITS[1]``, so the heads see windows of several widths. The cross-attentions' value and output
projections start at unit gain instead of 0.02, so the content a latent reads, and an output query reads from
it, reaches the output head at a scale the gradient can use (with 0.02 it arrives scaled down four times).

Only initial values change: the architecture, the parameter set and the export to ``PerceiverForMaskedLM``
are exactly those of the normal initialisation. Measured so far (README, "Learning"): the attention is local as
designed, but at seq 128 the model has not yet left the plateau sooner with it than without it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

PEAK_LOGITS = (4.0, 16.0)  # matched-position attention logit of the bluntest and the sharpest head
MAX_FREQUENCIES = 32  # code pairs; more make the window narrower than sharpness needs
VALUE_GAIN = 1.0  # std * sqrt(fan_in) of the cross-attentions' value and output projections
LATENT_CODE_RMS = 1.0  # per channel, so the latents' code is not drowned by the content they take in


def position_code(num: int, channels: int, device: torch.device | None = None) -> torch.Tensor:
    """(num, channels) codes of the centres ``(j + 0.5) / num`` of ``num`` equal cells of the sequence."""
    t = (torch.arange(num, device=device, dtype=torch.float64) + 0.5) / num
    k = torch.arange(1, channels // 2 + 1, device=device, dtype=torch.float64)
    angles = math.pi * t[:, None] * k[None, :]
    return torch.stack([angles.cos(), angles.sin()], dim=-1).reshape(num, -1)


def code_channels(model: nn.Module) -> int:
    """Channels the code occupies: even, at most every width it passes through and a head's qk width."""
    config = model.config
    enc, dec = model.encoder.cross_attention.attention, model.decoder.cross_attention.attention
    head_widths = [a.q_proj.out_features // a.num_heads for a in (enc, dec)]
    widths = [config.encoder.num_input_channels, config.num_latent_channels, *head_widths, 2 * MAX_FREQUENCIES]
    return min(widths) // 2 * 2



def _structure_heads(attention, q_in: torch.Tensor, kv_in: torch.Tensor, m: int) -> None:
    """Add a gain on the code channels to each head's query and key projection, scaled so that a query and a
    key at the same position give that head's peak logit (inputs are the layer's normalised q and kv)."""
    heads = attention.num_heads
    head_dim = attention.q_proj.out_features // heads
    # The code's dot product at matching positions, as the normalised inputs carry it.
    matched = (q_in[:, :m].norm(dim=-1).mean() * kv_in[:, :m].norm(dim=-1).mean()).item()
    peaks = torch.logspace(math.log10(PEAK_LOGITS[0]), math.log10(PEAK_LOGITS[1]), heads).tolist() if heads > 1 \
        else [math.sqrt(PEAK_LOGITS[0] * PEAK_LOGITS[1])]
    eye = torch.eye(m, dtype=attention.q_proj.weight.dtype, device=attention.q_proj.weight.device)
    for h, peak in enumerate(peaks):
        gain = math.sqrt(peak * math.sqrt(head_dim) / matched)
        rows = slice(h * head_dim, h * head_dim + m)
        attention.q_proj.weight[rows, :m] += gain * eye
        attention.k_proj.weight[rows, :m] += gain * eye


@torch.no_grad()
def apply_local_init(model: nn.Module) -> None:
    """Make ``model``'s (a ``PerceiverMLM`` just initialised normally) cross-attentions local (module doc)."""
    config = model.config
    m = code_channels(model)
    if m < 2:
        return
    std = config.init_scale
    embedding = model.input_adapter
    positions = embedding.position_embedding.weight
    latents, queries = model.encoder.latents, model.decoder.output_queries
    device = positions.device
    encoder, decoder = model.encoder.cross_attention, model.decoder.cross_attention
    # Values carry the content: give the cross-attentions' value and output projections unit gain, so what a
    # latent reads (and what an output query reads from it) is not scaled down twice by 0.02-sized weights.
    for layer in (encoder, decoder):
        for linear in (layer.attention.v_proj, layer.attention.o_proj):
            linear.weight.normal_(0.0, VALUE_GAIN / linear.in_features ** 0.5)
    # The input's code carries as much energy as a token embedding, so values still see the token; latents
    # and output queries are learned inputs whose code must survive the content the encoder adds to them.
    input_width = positions.shape[1]
    positions[:, :m] = std * math.sqrt(input_width / (m // 2)) * position_code(len(positions), m, device)
    latents[:, :m] = LATENT_CODE_RMS * math.sqrt(2) * position_code(len(latents), m, device)
    queries[:, :m] = 2 * std * math.sqrt(input_width / (m // 2)) * position_code(len(queries), m, device)

    tokens = embedding.token_embedding.weight
    sample = tokens[torch.randint(len(tokens), (4, len(positions)), device=device)]
    inputs = positions + sample
    _structure_heads(encoder.attention, encoder.q_norm(latents), encoder.kv_norm(inputs[0]), m)
    encoded = model.encoder(inputs)  # the decoder attends to latents that carry content too
    _structure_heads(decoder.attention, decoder.q_norm(queries), decoder.kv_norm(encoded).flatten(0, 1), m)
