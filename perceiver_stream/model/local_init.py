"""Local, ordered attention at initialisation: how a Perceiver IO MLM leaves the unigram plateau quickly.

With the paper's Normal(0, 0.02) initialisation every cross-attention is almost uniform: each latent reads
the mean of all input positions and each output query the mean of all latents. Every position then gets the
same prediction, the unigram distribution, and the model sits on that plateau for thousands of steps.

Measured (docs/design.md): making attention merely *local* is not enough. A latent whose heads all read a
window around its own cells gets an unordered bag of its neighbourhood, and the model stays on the plateau as
long as with uniform attention; a latent whose heads each read *one* input position, head ``h`` at offset
``h - (H - 1) / 2`` from the latent's centre, holds its neighbourhood in order and the model leaves the plateau
within one to two hundred batches of 32 (with Lamb at 5e-3 ... 1e-2, whose per-layer trust ratio keeps the
initial attention sharp while the rest learns to use it; AdamW at 2e-3 blurs it). Ordered reading needs
attention that resolves single positions, which a code of a head's width (16 sine/cosine pairs in the
blueprint) gives only with geometrically spaced frequencies.

``apply_local_init`` writes that code, ``c(p) = [cos(w_k p), sin(w_k p)]`` with ``w_k`` from
``MAX_FREQUENCY`` down to ``pi / max_seq_len`` radians per position, into the first channels of the position
embedding, the latents (at their centres) and the output queries; it adds to each encoder head's query
projection the rotation that shifts the code by the head's offset (so ``q . k`` peaks at that offset) and to its
key projection a gain on the code channels; the decoder's heads are centred, of several sharpnesses, as output
query ``p`` needs the latents holding ``p``. The cross-attentions' value and output projections start at unit
gain so the content arrives at a scale the gradient can use, and the latent self-attention layers start as the
identity (their attention and MLP output projections at zero): uniform attention among latents would add what
all latents share to every latent and bury the ordered content. Only initial values change: the architecture,
the parameter set and the export to ``PerceiverForMaskedLM`` stay exactly those of the paper's initialisation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

MAX_FREQUENCY = 0.9 * math.pi  # radians per position of the fastest pair: below pi, so neighbours do not alias
ENCODER_PEAK_LOGIT = 30.0  # matched-position attention logit of every encoder head: one position each
DECODER_PEAK_LOGITS = (4.0, 16.0)  # bluntest and sharpest decoder head
MAX_FREQUENCIES = 32  # code pairs at most
VALUE_GAIN = 1.0  # std * sqrt(fan_in) of the cross-attentions' value and output projections
LATENT_CODE_RMS = 1.0  # per channel, so the latents' code is not drowned by the content they take in


def frequencies(pairs: int, seq_len: int) -> torch.Tensor:
    """Angular frequencies (radians per position) of the code's pairs, geometric from ``MAX_FREQUENCY`` down
    to ``pi / seq_len``: their cosines cancel except at distance 0, so attention can resolve one position."""
    if pairs == 1:
        return torch.tensor([MAX_FREQUENCY], dtype=torch.float64)
    ratio = (math.pi / seq_len) / MAX_FREQUENCY
    return MAX_FREQUENCY * ratio ** (torch.arange(pairs, dtype=torch.float64) / (pairs - 1))


def position_code(positions: torch.Tensor, channels: int, seq_len: int) -> torch.Tensor:
    """(len(positions), channels) codes of (fractional) positions, interleaved cos/sin per frequency."""
    angles = positions.double()[:, None] * frequencies(channels // 2, seq_len).to(positions.device)[None, :]
    return torch.stack([angles.cos(), angles.sin()], dim=-1).reshape(len(positions), -1)


def rotation(offset: float, channels: int, seq_len: int) -> torch.Tensor:
    """(channels, channels) block rotation with ``rotation @ c(p) == c(p + offset)``."""
    angles = offset * frequencies(channels // 2, seq_len)
    cos, sin = angles.cos(), angles.sin()
    blocks = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (pairs, 2, 2)
    return torch.block_diag(*blocks)


def latent_centres(num_latents: int, seq_len: int) -> torch.Tensor:
    """Position of the middle of the cell of the sequence each latent covers."""
    return (torch.arange(num_latents, dtype=torch.float64) + 0.5) * seq_len / num_latents - 0.5


def code_channels(model: nn.Module) -> int:
    """Channels the code occupies: even, at most every width it passes through and a head's qk width."""
    config = model.config
    enc, dec = model.encoder.cross_attention.attention, model.decoder.cross_attention.attention
    head_widths = [a.q_proj.out_features // a.num_heads for a in (enc, dec)]
    widths = [config.encoder.num_input_channels, config.num_latent_channels, *head_widths, 2 * MAX_FREQUENCIES]
    return min(widths) // 2 * 2


def _structure_heads(attention, q_in: torch.Tensor, kv_in: torch.Tensor, m: int, *, peaks: list[float],
                     query_maps: list[torch.Tensor]) -> None:
    """Add ``query_maps[h]`` (a rotation, or the identity) and an identity to head ``h``'s query and key
    projections on the code channels, scaled so the matched query and key give the head's peak logit (the
    inputs are the layer's normalised q and kv)."""
    head_dim = attention.q_proj.out_features // attention.num_heads
    matched = (q_in[:, :m].norm(dim=-1).mean() * kv_in[:, :m].norm(dim=-1).mean()).item()
    weight = attention.q_proj.weight
    eye = torch.eye(m, dtype=weight.dtype, device=weight.device)
    for h, (peak, query_map) in enumerate(zip(peaks, query_maps, strict=True)):
        gain = math.sqrt(peak * math.sqrt(head_dim) / matched)
        rows = slice(h * head_dim, h * head_dim + m)
        weight[rows, :m] += gain * query_map.to(weight)
        attention.k_proj.weight[rows, :m] += gain * eye


@torch.no_grad()
def apply_local_init(model: nn.Module) -> None:
    """Make ``model``'s (a ``PerceiverMLM`` just initialised normally) attention local and ordered (module doc)."""
    config = model.config
    m = code_channels(model)
    if m < 2 or model.input_adapter.position_embedding.weight.is_meta:  # meta: no values to set (counting)
        return
    std, seq_len = config.init_scale, config.max_seq_len
    embedding = model.input_adapter
    positions = embedding.position_embedding.weight
    latents, queries = model.encoder.latents, model.decoder.output_queries
    device = positions.device
    encoder, decoder = model.encoder.cross_attention, model.decoder.cross_attention
    for layer in (encoder, decoder):
        for linear in (layer.attention.v_proj, layer.attention.o_proj):
            linear.weight.normal_(0.0, VALUE_GAIN / linear.in_features ** 0.5)
    for layer in model.encoder.self_attention:
        layer.attention.o_proj.weight.zero_()
        layer.mlp[-1].weight.zero_()
    # The input's code carries as much energy as a token embedding, so values still see the token; latents
    # and output queries are learned inputs whose code must survive the content the encoder adds to them.
    input_width = positions.shape[1]
    scale = std * math.sqrt(input_width / (m // 2))
    code = position_code(torch.arange(len(positions), device=device), m, seq_len)
    positions[:, :m] = scale * code
    latents[:, :m] = LATENT_CODE_RMS * math.sqrt(2) * position_code(latent_centres(len(latents), seq_len).to(device),
                                                                    m, seq_len)
    queries[:, :m] = 2 * scale * code

    tokens = embedding.token_embedding.weight
    inputs = positions + tokens[torch.randint(len(tokens), (4, len(positions)), device=device)]
    heads = encoder.attention.num_heads
    offsets = [h - (heads - 1) / 2 for h in range(heads)]
    _structure_heads(encoder.attention, encoder.q_norm(latents), encoder.kv_norm(inputs[0]), m,
                     peaks=[ENCODER_PEAK_LOGIT] * heads, query_maps=[rotation(o, m, seq_len) for o in offsets])
    encoded = model.encoder(inputs)  # the decoder attends to latents that carry content too
    heads = decoder.attention.num_heads
    peaks = torch.logspace(math.log10(DECODER_PEAK_LOGITS[0]), math.log10(DECODER_PEAK_LOGITS[1]), heads).tolist() \
        if heads > 1 else [math.sqrt(DECODER_PEAK_LOGITS[0] * DECODER_PEAK_LOGITS[1])]
    _structure_heads(decoder.attention, decoder.q_norm(queries), decoder.kv_norm(encoded).flatten(0, 1), m,
                     peaks=peaks, query_maps=[torch.eye(m, dtype=torch.float64)] * heads)
