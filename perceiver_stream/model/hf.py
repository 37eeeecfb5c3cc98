"""Weights to and from ``transformers.PerceiverForMaskedLM`` (and to ``PerceiverForSequenceClassification``).

Import lets users start from DeepMind's released ``deepmind/language-perceiver``; export lets any
``transformers`` tool (``pipeline("fill-mask")``, ``pipeline("text-classification")``) use what we trained. The
architectures are the same networks with different parameter names, so conversion is a renaming plus a config
translation.
"""

from __future__ import annotations

import re

import torch
from transformers import PerceiverConfig, PerceiverForMaskedLM, PerceiverForSequenceClassification

from perceiver_stream.model.classifier import PerceiverClassifier
from perceiver_stream.model.config import DecoderConfig, EncoderConfig, PerceiverMLMConfig, mlm_config_for
from perceiver_stream.model.mlm import PerceiverMLM

# transformers hard-codes its MLM decoder's attention shape (modeling_perceiver.PerceiverForMaskedLM).
HF_DECODER_QK_CHANNELS = 256
HF_DECODER_HEADS = 8

_ENCODER_RENAMES = [
    (r"^input_adapter\.token_embedding\.", "perceiver.input_preprocessor.embeddings."),
    (r"^input_adapter\.position_embedding\.", "perceiver.input_preprocessor.position_embeddings."),
    (r"^encoder\.latents$", "perceiver.embeddings.latents"),
    (r"^encoder\.cross_attention\.", "perceiver.encoder.cross_attention."),
    (r"^encoder\.self_attention\.(\d+)\.", r"perceiver.encoder.self_attends.\1."),
]
_MLM_DECODER_RENAMES = [
    (r"^decoder\.output_queries$", "perceiver.decoder.output_position_encodings.position_embeddings"),
    (r"^decoder\.cross_attention\.", "perceiver.decoder.decoding_cross_attention."),
    (r"^output_bias$", "embedding_decoder.bias"),
]
_CLASSIFIER_DECODER_RENAMES = [
    (r"^decoder\.query$", "perceiver.decoder.decoder.output_position_encodings.position_embeddings"),
    (r"^decoder\.cross_attention\.", "perceiver.decoder.decoder.decoding_cross_attention."),
    (r"^decoder\.linear\.", "perceiver.decoder.decoder.final_layer."),
]
_LAYER_RENAMES = [
    (r"\.(q_norm|norm)\.", ".attention.self.layernorm1."),
    (r"\.kv_norm\.", ".attention.self.layernorm2."),
    (r"\.attention\.q_proj\.", ".attention.self.query."),
    (r"\.attention\.k_proj\.", ".attention.self.key."),
    (r"\.attention\.v_proj\.", ".attention.self.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.0\.", ".layernorm."),
    (r"\.mlp\.1\.", ".mlp.dense1."),
    (r"\.mlp\.3\.", ".mlp.dense2."),
]


def hf_name(name: str, *, classifier: bool = False) -> str:
    """The transformers parameter name of our parameter ``name``: of ``PerceiverForMaskedLM``, or with
    ``classifier`` of ``PerceiverForSequenceClassification``."""
    decoder = _CLASSIFIER_DECODER_RENAMES if classifier else _MLM_DECODER_RENAMES
    for pattern, replacement in _ENCODER_RENAMES + decoder + _LAYER_RENAMES:
        name = re.sub(pattern, replacement, name)
    return name


def to_hf_config(config: PerceiverMLMConfig) -> PerceiverConfig:
    """The equivalent ``PerceiverConfig``; raises if ``config`` uses a shape transformers cannot express."""
    enc, dec = config.encoder, config.decoder
    cross_qk = enc.num_cross_attention_qk_channels or config.num_latent_channels
    self_qk = enc.num_self_attention_qk_channels or config.num_latent_channels
    cross_v = enc.num_cross_attention_v_channels or cross_qk
    self_v = enc.num_self_attention_v_channels or self_qk
    required = {
        "encoder.num_cross_attention_qk_channels == encoder.num_self_attention_qk_channels": cross_qk == self_qk,
        "encoder.num_cross_attention_v_channels == encoder.num_self_attention_v_channels": cross_v == self_v,
        f"decoder.num_cross_attention_qk_channels == {HF_DECODER_QK_CHANNELS}": (
            dec.num_cross_attention_qk_channels == HF_DECODER_QK_CHANNELS
        ),
        f"decoder.num_cross_attention_heads == {HF_DECODER_HEADS}": dec.num_cross_attention_heads == HF_DECODER_HEADS,
        "decoder.cross_attention_widening_factor == 1": dec.cross_attention_widening_factor == 1,
        "decoder.cross_attention_residual == false": not dec.cross_attention_residual,
        "layer_norm_eps == 1e-5": config.layer_norm_eps == 1e-5,
    }
    unmet = [condition for condition, ok in required.items() if not ok]
    if unmet:
        raise ValueError(f"transformers' PerceiverForMaskedLM cannot express this model; it needs {unmet}")
    return PerceiverConfig(
        vocab_size=config.vocab_size,
        max_position_embeddings=config.max_seq_len,
        num_latents=config.num_latents,
        d_latents=config.num_latent_channels,
        d_model=enc.num_input_channels,
        qk_channels=cross_qk,
        v_channels=cross_v,
        num_blocks=enc.num_self_attention_blocks,
        num_self_attends_per_block=enc.num_self_attention_layers_per_block,
        num_self_attention_heads=enc.num_self_attention_heads,
        num_cross_attention_heads=enc.num_cross_attention_heads,
        self_attention_widening_factor=enc.self_attention_widening_factor,
        cross_attention_widening_factor=enc.cross_attention_widening_factor,
        use_query_residual=enc.cross_attention_residual,
        attention_probs_dropout_prob=enc.dropout,
        initializer_range=config.init_scale,
    )


def from_hf_config(hf: PerceiverConfig) -> PerceiverMLMConfig:
    """Our config for a ``PerceiverForMaskedLM`` config."""
    kv_shaped = hf.cross_attention_shape_for_attention == "kv"
    cross_qk = hf.qk_channels or (hf.d_model if kv_shaped else hf.d_latents)
    self_qk = hf.qk_channels or hf.d_latents
    return PerceiverMLMConfig(
        vocab_size=hf.vocab_size,
        max_seq_len=hf.max_position_embeddings,
        num_latents=hf.num_latents,
        num_latent_channels=hf.d_latents,
        encoder=EncoderConfig(
            num_input_channels=hf.d_model,
            num_cross_attention_qk_channels=cross_qk,
            num_cross_attention_v_channels=hf.v_channels or cross_qk,
            num_cross_attention_heads=hf.num_cross_attention_heads,
            num_self_attention_qk_channels=self_qk,
            num_self_attention_v_channels=hf.v_channels or self_qk,
            num_self_attention_heads=hf.num_self_attention_heads,
            num_self_attention_layers_per_block=hf.num_self_attends_per_block,
            num_self_attention_blocks=hf.num_blocks,
            cross_attention_widening_factor=hf.cross_attention_widening_factor,
            self_attention_widening_factor=hf.self_attention_widening_factor,
            cross_attention_residual=hf.use_query_residual,
            dropout=hf.attention_probs_dropout_prob,
        ),
        decoder=DecoderConfig(
            num_cross_attention_qk_channels=HF_DECODER_QK_CHANNELS,
            num_cross_attention_v_channels=hf.d_model,
            num_cross_attention_heads=HF_DECODER_HEADS,
            dropout=hf.attention_probs_dropout_prob,
        ),
        init_scale=hf.initializer_range,
    )


def load_hf_weights(model: PerceiverMLM, hf_model: PerceiverForMaskedLM) -> None:
    """Copy every weight of ``hf_model`` into ``model`` (shapes must match; nothing may be left over)."""
    hf_state = hf_model.state_dict()
    ours = {name: hf_state[hf_name(name)] for name in model.state_dict()}
    left_over = set(hf_state) - {hf_name(name) for name in ours}
    if left_over:
        raise ValueError(f"PerceiverForMaskedLM weights with no counterpart: {sorted(left_over)}")
    model.load_state_dict(ours, strict=True)


def from_hf(hf_model: PerceiverForMaskedLM) -> PerceiverMLM:
    """Our model with ``hf_model``'s config and weights."""
    model = PerceiverMLM(from_hf_config(hf_model.config))
    load_hf_weights(model, hf_model)
    return model


@torch.no_grad()
def to_hf(model: PerceiverMLM) -> PerceiverForMaskedLM:
    """A ``PerceiverForMaskedLM`` with ``model``'s config and weights (the inverse of ``from_hf``)."""
    hf_model = PerceiverForMaskedLM(to_hf_config(model.config))
    hf_model.load_state_dict({hf_name(k): v for k, v in model.state_dict().items()}, strict=True)
    return hf_model.eval()


def to_hf_classifier_config(config) -> PerceiverConfig:
    """The ``PerceiverConfig`` of ``PerceiverForSequenceClassification`` for our classifier config; raises if
    transformers cannot express it (its decoder is fixed: one head, query/key and value widths of the latents)."""
    dec, d = config.decoder, config.num_latent_channels
    required = {
        "decoder.num_cross_attention_heads == 1": dec.num_cross_attention_heads == 1,
        f"decoder.num_cross_attention_qk_channels in (null, {d})": dec.num_cross_attention_qk_channels in (None, d),
        f"decoder.num_cross_attention_v_channels in (null, {d})": dec.num_cross_attention_v_channels in (None, d),
        "decoder.cross_attention_widening_factor == 1": dec.cross_attention_widening_factor == 1,
    }
    unmet = [condition for condition, ok in required.items() if not ok]
    if unmet:
        raise ValueError(f"transformers' PerceiverForSequenceClassification cannot express this model; it needs "
                         f"{unmet}")
    hf = to_hf_config(mlm_config_for(config))
    hf.num_labels = config.num_classes
    return hf


@torch.no_grad()
def to_hf_classifier(model: PerceiverClassifier) -> PerceiverForSequenceClassification:
    """A ``PerceiverForSequenceClassification`` with ``model``'s config and weights."""
    hf_model = PerceiverForSequenceClassification(to_hf_classifier_config(model.config))
    hf_model.load_state_dict({hf_name(k, classifier=True): v for k, v in model.state_dict().items()}, strict=True)
    return hf_model.eval()
