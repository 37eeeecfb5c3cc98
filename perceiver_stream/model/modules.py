"""Perceiver IO building blocks: attention, MLP, cross- and self-attention layers, encoder, decoder.

Every attention goes through ``F.scaled_dot_product_attention`` so GPUs use the flash or memory-efficient
kernels. Layers are pre-norm with residuals, as in the paper and in ``transformers``' Perceiver, so weights
import one to one (see ``perceiver_stream.model.hf``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Sequential):
    """LayerNorm -> Linear(C, wC) -> GELU -> Linear(wC, C); the residual is added by the caller."""

    def __init__(self, num_channels: int, *, widening_factor: int, eps: float):
        hidden = widening_factor * num_channels
        super().__init__(
            nn.LayerNorm(num_channels, eps=eps),
            nn.Linear(num_channels, hidden),
            nn.GELU(),
            nn.Linear(hidden, num_channels),
        )


class MultiHeadAttention(nn.Module):
    """Multi-head attention whose query/key and value widths may differ from the inputs' widths.

    Args:
        num_heads: number of heads; must divide ``num_qk_channels`` and ``num_v_channels``.
        num_q_input_channels: width of the query input.
        num_kv_input_channels: width of the key/value input.
        num_qk_channels: total query/key width (split across heads).
        num_v_channels: total value width (split across heads).
        num_output_channels: width after the output projection.
        dropout: dropout on the attention probabilities (training only).
    """

    def __init__(
        self,
        *,
        num_heads: int,
        num_q_input_channels: int,
        num_kv_input_channels: int,
        num_qk_channels: int,
        num_v_channels: int,
        num_output_channels: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        for name, channels in (("qk", num_qk_channels), ("v", num_v_channels)):
            if channels % num_heads:
                raise ValueError(f"{name} channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(num_q_input_channels, num_qk_channels)
        self.k_proj = nn.Linear(num_kv_input_channels, num_qk_channels)
        self.v_proj = nn.Linear(num_kv_input_channels, num_v_channels)
        self.o_proj = nn.Linear(num_v_channels, num_output_channels)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend from ``x_q`` (B, Nq, Cq) to ``x_kv`` (B, Nkv, Ckv); ``pad_mask`` (B, Nkv) is True at padding."""
        q, k, v = self._heads(self.q_proj(x_q)), self._heads(self.k_proj(x_kv)), self._heads(self.v_proj(x_kv))
        attn_mask = None if pad_mask is None else ~pad_mask[:, None, None, :]
        o = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        b, _, n, _ = o.shape
        return self.o_proj(o.transpose(1, 2).reshape(b, n, -1))


class CrossAttentionLayer(nn.Module):
    """Queries attend to a separately normalised key/value input, then a residual MLP."""

    def __init__(
        self,
        *,
        num_heads: int,
        num_q_input_channels: int,
        num_kv_input_channels: int,
        num_qk_channels: int | None,
        num_v_channels: int | None,
        widening_factor: int,
        residual: bool,
        dropout: float,
        eps: float,
    ):
        super().__init__()
        qk = num_qk_channels or num_q_input_channels
        self.residual = residual
        self.q_norm = nn.LayerNorm(num_q_input_channels, eps=eps)
        self.kv_norm = nn.LayerNorm(num_kv_input_channels, eps=eps)
        self.attention = MultiHeadAttention(
            num_heads=num_heads, num_q_input_channels=num_q_input_channels,
            num_kv_input_channels=num_kv_input_channels, num_qk_channels=qk, num_v_channels=num_v_channels or qk,
            num_output_channels=num_q_input_channels, dropout=dropout,
        )
        self.mlp = MLP(num_q_input_channels, widening_factor=widening_factor, eps=eps)

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.attention(self.q_norm(x_q), self.kv_norm(x_kv), pad_mask)
        if self.residual:
            h = h + x_q
        return h + self.mlp(h)


class SelfAttentionLayer(nn.Module):
    """Latents attend to themselves (residual), then a residual MLP."""

    def __init__(
        self,
        *,
        num_heads: int,
        num_channels: int,
        num_qk_channels: int | None,
        num_v_channels: int | None,
        widening_factor: int,
        dropout: float,
        eps: float,
    ):
        super().__init__()
        qk = num_qk_channels or num_channels
        self.norm = nn.LayerNorm(num_channels, eps=eps)
        self.attention = MultiHeadAttention(
            num_heads=num_heads, num_q_input_channels=num_channels, num_kv_input_channels=num_channels,
            num_qk_channels=qk, num_v_channels=num_v_channels or qk, num_output_channels=num_channels,
            dropout=dropout,
        )
        self.mlp = MLP(num_channels, widening_factor=widening_factor, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        h = x + self.attention(h, h)
        return h + self.mlp(h)
