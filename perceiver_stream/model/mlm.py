"""The Perceiver IO masked language model: text adapter -> encoder -> decoder -> tied output head."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    apply_activation_checkpointing,
    checkpoint_wrapper,
    offload_wrapper,
)

from perceiver_stream.model.config import PerceiverConfig, PerceiverMLMConfig
from perceiver_stream.model.local_init import apply_local_init
from perceiver_stream.model.modules import CrossAttentionLayer, SelfAttentionLayer

ATTENTION_LAYERS = (CrossAttentionLayer, SelfAttentionLayer)
IGNORE_INDEX = -100  # the label of a position that carries no loss (torch's cross_entropy default)


class _TiedLookup(torch.autograd.Function):
    """Token lookup that also passes the embedding weight on to the tied output head.

    The weight then has one gradient in the graph instead of two: backward runs once both the lookup's and the
    head's gradients have arrived and adds the looked-up rows into the head's dense gradient in place. Two uses
    of the weight would make autograd sum two vocab x C gradients into a third (or, for a sparse lookup, copy
    the dense one), which costs more than a step's whole output head on CPU.
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(input_ids)
        ctx.weight_shape = weight.shape
        return F.embedding(input_ids, weight), weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad_tokens: torch.Tensor | None, grad_head: torch.Tensor | None):
        (input_ids,) = ctx.saved_tensors
        if grad_head is None:
            grad_weight = grad_tokens.new_zeros(ctx.weight_shape)
        else:  # the head's gradient is a fresh matmul result that nothing else holds
            grad_weight = grad_head.contiguous()
        if grad_tokens is not None:
            rows, values = input_ids.reshape(-1), grad_tokens.reshape(-1, grad_tokens.shape[-1])
            # Pick the deterministic scatter-add, so resumed runs repeat bit for bit: on CUDA index_put_'s
            # accumulate sorts (index_add_ uses atomics); on CPU index_add_ adds in order (index_put_ does not).
            if grad_weight.device.type == "cuda":
                grad_weight.index_put_((rows,), values, accumulate=True)
            else:
                grad_weight.index_add_(0, rows, values)
        return grad_weight, None


class TextInputAdapter(nn.Module):
    """Token embedding plus a learned position embedding, both of width ``num_input_channels``."""

    def __init__(self, vocab_size: int, max_seq_len: int, num_channels: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, num_channels)
        self.position_embedding = nn.Embedding(max_seq_len, num_channels)

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Input embeddings (B, L, C) and the token embedding weight for the tied head (see ``_TiedLookup``)."""
        tokens, head_weight = _TiedLookup.apply(self.token_embedding.weight, input_ids)
        return tokens + self._positions(input_ids), head_weight

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings (B, L, C) for a model without the tied head (a classifier)."""
        return self.token_embedding(input_ids) + self._positions(input_ids)

    def _positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.position_embedding(torch.arange(input_ids.shape[1], device=input_ids.device))


class PerceiverEncoder(nn.Module):
    """Latents cross-attend to the input once, then run the weight-shared self-attention block."""

    def __init__(self, config: PerceiverConfig):
        super().__init__()
        enc, eps = config.encoder, config.layer_norm_eps
        self.num_blocks = enc.num_self_attention_blocks
        self.latents = nn.Parameter(torch.empty(config.num_latents, config.num_latent_channels))
        self.cross_attention = CrossAttentionLayer(
            num_heads=enc.num_cross_attention_heads, num_q_input_channels=config.num_latent_channels,
            num_kv_input_channels=enc.num_input_channels, num_qk_channels=enc.num_cross_attention_qk_channels,
            num_v_channels=enc.num_cross_attention_v_channels, widening_factor=enc.cross_attention_widening_factor,
            residual=enc.cross_attention_residual, dropout=enc.dropout, eps=eps,
        )
        self.self_attention = nn.ModuleList(
            SelfAttentionLayer(
                num_heads=enc.num_self_attention_heads, num_channels=config.num_latent_channels,
                num_qk_channels=enc.num_self_attention_qk_channels, num_v_channels=enc.num_self_attention_v_channels,
                widening_factor=enc.self_attention_widening_factor, dropout=enc.dropout, eps=eps,
            )
            for _ in range(enc.num_self_attention_layers_per_block)
        )

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        latents = self.cross_attention(self.latents.expand(x.shape[0], -1, -1), x, pad_mask)
        for _ in range(self.num_blocks):
            for layer in self.self_attention:
                latents = layer(latents)
        return latents


class PerceiverDecoder(nn.Module):
    """Learned output queries, one per position, cross-attend to the latents.

    Queries never attend to each other, so decoding a subset of positions gives exactly the outputs the full
    decode has at those positions; training decodes only the labelled ones.
    """

    def __init__(self, config: PerceiverMLMConfig):
        super().__init__()
        dec, c = config.decoder, config.encoder.num_input_channels
        self.output_queries = nn.Parameter(torch.empty(config.max_seq_len, c))
        self.cross_attention = CrossAttentionLayer(
            num_heads=dec.num_cross_attention_heads, num_q_input_channels=c,
            num_kv_input_channels=config.num_latent_channels, num_qk_channels=dec.num_cross_attention_qk_channels,
            num_v_channels=dec.num_cross_attention_v_channels, widening_factor=dec.cross_attention_widening_factor,
            residual=dec.cross_attention_residual, dropout=dec.dropout, eps=config.layer_norm_eps,
        )

    def forward(self, latents: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Decode ``positions`` (B, P) of each sample from its ``latents`` (B, N, D) to (B, P, C)."""
        return self.cross_attention(self.output_queries[positions], latents)


class MLMOutput(NamedTuple):
    """Logits (M, V) of the M labelled tokens of a batch, in row-major order, and their targets (M,)."""

    logits: torch.Tensor
    targets: torch.Tensor


class PerceiverMLM(nn.Module):
    """Perceiver IO masked language model with the output head tied to the token embedding."""

    def __init__(self, config: PerceiverMLMConfig):
        super().__init__()
        self.config = config
        self.input_adapter = TextInputAdapter(config.vocab_size, config.max_seq_len, config.encoder.num_input_channels)
        self.encoder = PerceiverEncoder(config)
        self.decoder = PerceiverDecoder(config)
        self.output_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, init_scale) weights, zero biases, unit LayerNorms (the paper's initialisation), then with
        ``config.local_init`` the position code that makes the cross-attentions local."""
        std = self.config.init_scale
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
                module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, std)
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
        self.encoder.latents.normal_(0.0, std)
        self.decoder.output_queries.normal_(0.0, std)
        self.output_bias.zero_()
        if self.config.local_init:
            apply_local_init(self)

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents (B, N, D) of ``input_ids`` (B, L), and the head's weight; ``attention_mask`` (B, L) is 1 at
        real tokens."""
        pad_mask = None if attention_mask is None else attention_mask == 0
        inputs, head_weight = self.input_adapter(input_ids)
        return self.encoder(inputs, pad_mask), head_weight

    def logits(self, hidden: torch.Tensor, head_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Tied output head; the bias is fused into the matmul (one pass over the vocab-sized logits)."""
        weight = self.input_adapter.token_embedding.weight if head_weight is None else head_weight
        return F.linear(hidden, weight, self.output_bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
        *, latents_only: bool = False,
    ) -> torch.Tensor | MLMOutput:
        """Full-sequence logits (B, L, V) for inference and fill-mask; with ``labels``, an ``MLMOutput`` with
        logits only where ``labels`` != IGNORE_INDEX (training); with ``latents_only``, the encoder's latents
        (B, N, D) and no decoding (a linear probe's features, ``perceiver_stream.probe``).

        All go through ``forward`` (``__call__``) so FSDP's hooks gather the parameters.
        """
        latents, head_weight = self.encode(input_ids, attention_mask)
        if latents_only:
            return latents
        if labels is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1)
            return self.logits(self.decoder(latents, positions), head_weight)
        return self._decode_labelled(latents, labels, head_weight)

    def _decode_labelled(self, latents: torch.Tensor, labels: torch.Tensor, head_weight: torch.Tensor) -> MLMOutput:
        """The decoder and the vocabulary projection skip the ~85% of positions that carry no loss, which is
        most of an MLM step's decoder cost."""
        selected = labels != IGNORE_INDEX
        counts = selected.sum(dim=1)
        width = max(int(counts.max()), 1)
        # Stable sort puts each row's labelled positions first, in position order.
        positions = torch.argsort((~selected).to(torch.uint8), dim=1, stable=True)[:, :width]
        valid = torch.arange(width, device=labels.device) < counts[:, None]
        hidden = self.decoder(latents, positions)[valid]
        return MLMOutput(self.logits(hidden, head_weight), labels.gather(1, positions)[valid])


def checkpoint_layers(model: nn.Module, offload: bool = False) -> None:
    """Wrap every attention layer so its activations are recomputed in backward.

    With ``offload`` the inputs the checkpoints keep are held in host memory, as Composer's FSDP
    ``activation_cpu_offload`` does: GPU memory then holds one layer's activations at a time.
    """

    def wrap(module: nn.Module) -> nn.Module:
        module = checkpoint_wrapper(module)
        return offload_wrapper(module) if offload else module

    apply_activation_checkpointing(model, checkpoint_wrapper_fn=wrap, check_fn=is_attention_layer)


def compile_layers(model: nn.Module, *, backend: str = "inductor") -> None:
    """Compile every attention layer in place (``torch.compile``, one region per layer). Layers of one kind share
    their compiled code, so compiling costs a few layers whatever the depth; and each stays the module that FSDP2
    shards and activation checkpointing wraps, under the same parameter names, so checkpoints do not change. The
    decoder's width (the batch's most labelled positions) varies, so it is compiled for dynamic shapes when it
    first changes. ``backend``: torch.compile's (``aot_eager`` traces without generating code: quick checks)."""
    for module in model.modules():
        if is_attention_layer(module):
            module.compile(backend=backend)


def is_attention_layer(module: nn.Module) -> bool:
    """The unit of FSDP wrapping and activation checkpointing: one cross- or self-attention layer."""
    return isinstance(module, ATTENTION_LAYERS)

