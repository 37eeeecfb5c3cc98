"""Typed configuration of the Perceiver IO masked language model.

Field names and meanings follow the blueprint command (``--model.encoder.num_self_attention_heads=8`` is
``PerceiverMLMConfig.encoder.num_self_attention_heads``), so a blueprint key maps to exactly one field.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field, fields
from typing import Any

# torch.compile backends model.compile_backend takes: inductor (code generation), cudagraphs (CUDA graphs, no
# code generation), aot_eager (traced and partitioned, run by eager kernels), eager (traced only).
COMPILE_BACKENDS = ("inductor", "cudagraphs", "aot_eager", "eager")
# PerceiverConfig settings that do not shape the weights or what they compute: a resumed run and a fine-tuning
# run may set them otherwise than the checkpoint's.
RUNTIME_KEYS = ("init_scale", "local_init", "activation_checkpointing", "activation_offloading", "compile",
                "compile_backend", "encoder.dropout")


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
class PerceiverConfig:
    """What every Perceiver IO text model of ours shares: the input adapter and the encoder.

    Attributes:
        vocab_size: tokenizer vocabulary size (the embedding rows and output logits).
        max_seq_len: maximum input length (learned position embeddings and output queries).
        num_latents: N, the number of latent vectors.
        num_latent_channels: D, the latent width.
        encoder: see EncoderConfig.
        init_scale: std of the normal initialisation of all weights (paper: 0.02).
        local_init: start with ordered local attention (``perceiver_stream.model.local_init``): encoder head h
            of latent i reads one input position, at offset h from the latent's share of the sequence; output
            query p reads the latents holding p; latent self-attention layers start as the identity. What makes
            the model leave the unigram plateau within a few hundred batches (docs/design.md). Only initial
            values change; the architecture and the export are the same.
        layer_norm_eps: epsilon of every LayerNorm.
        activation_checkpointing: recompute each attention layer's activations in the backward pass.
        activation_offloading: keep checkpointed activations in host memory (needs checkpointing on).
        compile: compile each attention layer with ``torch.compile`` (``perceiver_stream.model.mlm.compile_layers``).
            Off by default: on the 2-core development CPU it made the step slower (base 5%, small 10%) after a
            minute or more of compilation; ``make gpu-check`` measures it against eager on a GPU.
        compile_backend: torch.compile's backend for ``compile``: ``inductor`` generates code; ``aot_eager`` traces
            and partitions without generating any (torch's first step in isolating a compiler bug, and quick on CPU).
    """

    vocab_size: int = 32000
    max_seq_len: int = 512
    num_latents: int = 256
    num_latent_channels: int = 1280
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    init_scale: float = 0.02
    local_init: bool = True
    layer_norm_eps: float = 1e-5
    activation_checkpointing: bool = False
    activation_offloading: bool = False
    compile: bool = False
    compile_backend: str = "inductor"

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig(**self.encoder)
        if self.activation_offloading and not self.activation_checkpointing:
            raise ValueError("model.activation_offloading=true needs model.activation_checkpointing=true")
        if self.compile_backend not in COMPILE_BACKENDS:
            raise ValueError(f"model.compile_backend={self.compile_backend!r}: expected one of "
                             f"{', '.join(COMPILE_BACKENDS)}")
        if not 0.0 <= self.encoder.dropout < 1.0:
            raise ValueError(f"model.encoder.dropout={self.encoder.dropout} must be in [0, 1)")


@dataclass
class PerceiverMLMConfig(PerceiverConfig):
    """Perceiver IO MLM (Jaegle et al. 2021, "Perceiver IO", language configuration): the shared input adapter
    and encoder (``PerceiverConfig``), and a decoder of one output query per position.

    Attributes:
        decoder: see DecoderConfig.
    """

    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
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
        if not 0.0 <= self.decoder.dropout < 1.0:
            raise ValueError(f"model.decoder.dropout={self.decoder.dropout} must be in [0, 1)")


def mlm_config_for(config: PerceiverConfig) -> PerceiverMLMConfig:
    """An MLM config with ``config``'s input adapter and encoder, and the MLM decoder transformers would give
    it: the MLM whose encoder a classifier starts from when no pretrained one is given (its initialisation,
    ``local_init`` included, is the MLM's)."""
    shared = {f.name: getattr(config, f.name) for f in fields(PerceiverConfig)}
    return PerceiverMLMConfig(**shared, decoder=DecoderConfig(
        num_cross_attention_v_channels=config.encoder.num_input_channels))


@dataclass
class ClassificationDecoderConfig:
    """The classification decoder: one trainable query cross-attends to the latents, a linear layer maps the
    result to class logits (the original project's ``ClassificationDecoder``, transformers'
    ``PerceiverClassificationDecoder``; the defaults are transformers' layout, so the classifier exports).

    Attributes:
        num_cross_attention_qk_channels: query/key width (None: the latent width).
        num_cross_attention_v_channels: value width (None: the qk width).
        num_cross_attention_heads: heads of the cross-attention.
        cross_attention_widening_factor: MLP hidden width / latent width after the cross-attention.
        dropout: dropout on attention probabilities.
    """

    num_cross_attention_qk_channels: int | None = None
    num_cross_attention_v_channels: int | None = None
    num_cross_attention_heads: int = 1
    cross_attention_widening_factor: int = 1
    dropout: float = 0.0


@dataclass
class PerceiverClassifierConfig(PerceiverConfig):
    """A text classifier: the pretrained input adapter and encoder (``PerceiverConfig``; the keys must match the
    checkpoint's), and a classification decoder.

    Attributes:
        num_classes: classes (None: the number of labels in the shards' manifest).
        decoder: see ClassificationDecoderConfig.
        encoder_from: where the input adapter and encoder start from: a checkpoint of ours (an MLM's, or a
            classifier's, whose decoder comes along; full file or sharded directory), or a transformers
            ``PerceiverForMaskedLM`` directory. None: a freshly initialised MLM's encoder (``mlm_config_for``).
        freeze_encoder: train the decoder alone (the input adapter and encoder get no gradient and no update).
    """

    num_classes: int | None = None
    decoder: ClassificationDecoderConfig = field(default_factory=ClassificationDecoderConfig)
    encoder_from: str | None = None
    freeze_encoder: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.decoder, dict):
            self.decoder = ClassificationDecoderConfig(**self.decoder)
        if self.num_classes is not None and self.num_classes < 2:
            raise ValueError(f"model.num_classes={self.num_classes}: a classifier needs at least 2 classes")
        if not 0.0 <= self.decoder.dropout < 1.0:
            raise ValueError(f"model.decoder.dropout={self.decoder.dropout} must be in [0, 1)")


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differing_settings(recorded: dict[str, Any], configured: dict[str, Any], *, ignore: Collection[str],
                       sections: Collection[str] | None = None) -> list[tuple[str, Any, Any]]:
    """``(key, recorded value, configured value)`` for each ``model:`` key (``encoder.num_latents`` style) whose value
    in a checkpoint's recorded settings differs from the run's, sorted: what resuming and fine-tuning refuse. Keys in
    ``ignore`` may differ; with ``sections``, only keys whose first part is one of them are compared."""
    found, now = _flat(recorded), _flat(configured)
    return [(key, found.get(key), now.get(key)) for key in sorted(set(found) | set(now))
            if key not in ignore and (sections is None or key.split(".")[0] in sections)
            and found.get(key) != now.get(key)]
