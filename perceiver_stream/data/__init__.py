"""Streaming MDS shards to masked batches: stream config, manifest checks, the whole-word-masking collator."""

from perceiver_stream.data.config import DataConfig, StreamConfig
from perceiver_stream.data.dataset import DataError, DataInfo, build_dataloader, prepare
from perceiver_stream.data.masking import MaskingConfig, MLMCollator

__all__ = ["DataConfig", "DataError", "DataInfo", "MLMCollator", "MaskingConfig", "StreamConfig",
           "build_dataloader", "prepare"]
