"""Typed configuration of the Perceiver IO masked language model.

Field names and meanings follow the blueprint command (``--model.encoder.num_self_attention_heads=8`` is
``PerceiverMLMConfig.encoder.num_self_attention_heads``), so a blueprint key maps to exactly one field.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EncoderConfig:
    """The encoder: one cross-attention from the latents to the embedded input, then latent self-attention.

    Attributes:
        num_input_channels: C, the token embedding width (the text input adapter's output).
        num_cross_attention_qk_channels: query/key width of the cross-attention (None: latent width).
        num_cross_attention_v_channels: value width of the cross-attention (None: qk width).
        num_cross_attention_heads: heads of the cross-attention.
        num_self_attention_qk_channels: query/key width of latent self-attention (None: latent width).
        num_self_attention_v_channels: value width of latent self-attention (None: qk width).
        num_self_attention_heads: heads of latent self-attention.
        num_self_attention_layers_per_block: self-attention layers in one block.
        num_self_attention_blocks: how often the block is applied; blocks share weights (paper, Sec. 2).
        cross_attention_widening_factor: MLP hidden width / input width after the cross-attention.
        self_attention_widening_factor: MLP hidden width / input width in each self-attention layer.
        cross_attention_residual: add the latents back after the cross-attention (query residual).
        dropout: dropout on attention probabilities.
    """

    num_input_channels: int = 768
    num_cross_attention_qk_channels: int | None = 256
    num_cross_attention_v_channels: int | None = 1280
    num_cross_attention_heads: int = 8
    num_self_attention_qk_channels: int | None = 256
    num_self_attention_v_channels: int | None = 1280
    num_self_attention_heads: int = 8
    num_self_attention_layers_per_block: int = 26
    num_self_attention_blocks: int = 1
    cross_attention_widening_factor: int = 1
    self_attention_widening_factor: int = 1
    cross_attention_residual: bool = True
    dropout: float = 0.0


@dataclass
class DecoderConfig:
    """The decoder: learned output queries, one per position, cross-attend to the latents.

    Attributes:
        num_cross_attention_qk_channels: query/key width (None: query width, i.e. num_input_channels).
        num_cross_attention_v_channels: value width (None: qk width); must equal num_input_channels
            because the output head is tied to the token embedding.
        num_cross_attention_heads: heads of the decoder cross-attention.
        cross_attention_widening_factor: MLP hidden width / input width after the cross-attention.
        cross_attention_residual: add the output queries back after the cross-attention. Off in the
            paper's MLM (queries carry only position, the content comes from the latents).
        dropout: dropout on attention probabilities.
    """

    num_cross_attention_qk_channels: int | None = 256
    num_cross_attention_v_channels: int | None = 768
    num_cross_attention_heads: int = 8
    cross_attention_widening_factor: int = 1
    cross_attention_residual: bool = False
    dropout: float = 0.0


@dataclass
class PerceiverMLMConfig:
    """Perceiver IO MLM (Jaegle et al. 2021, "Perceiver IO", language configuration).

    Attributes:
        vocab_size: tokenizer vocabulary size (the embedding rows and output logits).
        max_seq_len: maximum input length (learned position embeddings and output queries).
        num_latents: N, the number of latent vectors.
        num_latent_channels: D, the latent width.
        encoder: see EncoderConfig.
        decoder: see DecoderConfig.
        init_scale: std of the normal initialisation of all weights (paper: 0.02).
        local_init: start with ordered local attention (``perceiver_stream.model.local_init``): encoder head h
            of latent i reads one input position, at offset h from the latent's share of the sequence; output
            query p reads the latents holding p; latent self-attention layers start as the identity. What makes
            the model leave the unigram plateau within a few hundred batches (README, "Learning"). Only initial
            values change; the architecture and the export are the same.
        layer_norm_eps: epsilon of every LayerNorm.
        activation_checkpointing: recompute each attention layer's activations in the backward pass.
        activation_offloading: keep checkpointed activations in host memory (needs checkpointing on).
    """

    vocab_size: int = 32000
    max_seq_len: int = 512
    num_latents: int = 256
    num_latent_channels: int = 1280
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    init_scale: float = 0.02
    local_init: bool = True
    layer_norm_eps: float = 1e-5
    activation_checkpointing: bool = False
    activation_offloading: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig(**self.encoder)
        if isinstance(self.decoder, dict):
            self.decoder = DecoderConfig(**self.decoder)
        v = self.decoder.num_cross_attention_v_channels or self.decoder.num_cross_attention_qk_channels
        v = v or self.encoder.num_input_channels
        if v != self.encoder.num_input_channels:
            raise ValueError(
                f"model.decoder.num_cross_attention_v_channels={v} must equal "
                f"model.encoder.num_input_channels={self.encoder.num_input_channels}: the output head is "
                "tied to the token embedding"
            )
        if self.activation_offloading and not self.activation_checkpointing:
            raise ValueError("model.activation_offloading=true needs model.activation_checkpointing=true")
        for name, value in (("encoder.dropout", self.encoder.dropout), ("decoder.dropout", self.decoder.dropout)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"model.{name}={value} must be in [0, 1)")
