"""The Perceiver IO masked language model and its Composer wrapper."""

from perceiver_stream.model.config import DecoderConfig, EncoderConfig, PerceiverMLMConfig
from perceiver_stream.model.mlm import MLMOutput, PerceiverMLM, checkpoint_layers, compile_layers, is_attention_layer

__all__ = [
    "DecoderConfig",
    "EncoderConfig",
    "MLMOutput",
    "PerceiverMLM",
    "PerceiverMLMConfig",
    "checkpoint_layers",
    "compile_layers",
    "is_attention_layer",
]
