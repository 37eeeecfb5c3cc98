"""A Perceiver IO text classifier: the pretrained input adapter and encoder, one trainable query, a linear head.

The layout is the original project's ``TextClassifier`` and transformers' ``PerceiverForSequenceClassification``:
the query cross-attends to the latents (with a query residual and an MLP, as every cross-attention layer here),
and a linear layer maps its output to the class logits. So the classifier exports to transformers
(``perceiver_stream.model.hf.to_hf_classifier``) with equal logits.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from perceiver_stream.model.config import PerceiverClassifierConfig, mlm_config_for
from perceiver_stream.model.mlm import PerceiverMLM
from perceiver_stream.model.modules import CrossAttentionLayer

ENCODER_PREFIXES = ("input_adapter.", "encoder.")  # the parameters an encoder checkpoint provides


class ClassificationDecoder(nn.Module):
    """One trainable query cross-attends to the latents (B, N, D); a linear layer gives the logits (B, K)."""

    def __init__(self, config: PerceiverClassifierConfig, num_classes: int):
        super().__init__()
        dec, d = config.decoder, config.num_latent_channels
        self.query = nn.Parameter(torch.empty(1, d))
        self.cross_attention = CrossAttentionLayer(
            num_heads=dec.num_cross_attention_heads, num_q_input_channels=d, num_kv_input_channels=d,
            num_qk_channels=dec.num_cross_attention_qk_channels, num_v_channels=dec.num_cross_attention_v_channels,
            widening_factor=dec.cross_attention_widening_factor, residual=True, dropout=dec.dropout,
            eps=config.layer_norm_eps,
        )
        self.linear = nn.Linear(d, num_classes)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        query = self.query.expand(latents.shape[0], -1, -1)
        return self.linear(self.cross_attention(query, latents)[:, 0])


class PerceiverClassifier(nn.Module):
    """Input adapter and encoder exactly as the MLM's (same parameter names), and a ``ClassificationDecoder``.

    A fresh classifier's input adapter and encoder are those of a freshly initialised MLM of the same shape
    (``mlm_config_for``; with ``local_init``, its ordered local attention), so "untrained" means what it means
    for pretraining; the decoder is Normal(0, init_scale) with zero biases and unit LayerNorms.
    """

    def __init__(self, config: PerceiverClassifierConfig):
        super().__init__()
        if config.num_classes is None:
            raise ValueError("model.num_classes is not set (the trainer takes it from the shards' manifest)")
        self.config = config
        mlm = PerceiverMLM(mlm_config_for(config))  # first: with the same seed, the MLM a pretraining run starts from
        self.input_adapter = mlm.input_adapter
        self.encoder = mlm.encoder
        self.decoder = ClassificationDecoder(config, config.num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The decoder's initialisation (the input adapter and encoder keep the fresh MLM's)."""
        std = self.config.init_scale
        for module in self.decoder.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
                module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
        self.decoder.query.normal_(0.0, std)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """What ``freeze_encoder`` freezes: the input adapter's and the encoder's parameters."""
        return [*self.input_adapter.parameters(), *self.encoder.parameters()]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits (B, K) of ``input_ids`` (B, L); ``attention_mask`` (B, L) is 1 at real tokens."""
        pad_mask = None if attention_mask is None else attention_mask == 0
        latents = self.encoder(self.input_adapter.embed(input_ids), pad_mask)
        return self.decoder(latents)


def encoder_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The input adapter's and encoder's entries of a model state dict (an MLM's or a classifier's)."""
    return {key: value for key, value in state.items() if key.startswith(ENCODER_PREFIXES)}


def freeze_encoder(model: PerceiverClassifier) -> None:
    for param in model.encoder_parameters():
        param.requires_grad_(False)


def build_classifier(config: PerceiverClassifierConfig, num_classes: int) -> PerceiverClassifier:
    """A fresh classifier of ``num_classes`` (``config.num_classes``, when set, must agree)."""
    if config.num_classes is not None and config.num_classes != num_classes:
        raise ValueError(f"model.num_classes={config.num_classes} but the shards have {num_classes} labels")
    return PerceiverClassifier(replace(config, num_classes=num_classes))
