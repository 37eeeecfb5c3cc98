"""Streaming MDS shards to batches: stream config, manifest checks, the whole-word-masking and classification
collators."""

from perceiver_stream.data.config import ClassificationDataConfig, DataConfig, StreamConfig, StreamingDataConfig
from perceiver_stream.data.dataset import DataError, DataInfo, build_dataloader, prepare
from perceiver_stream.data.masking import MaskingConfig, MLMCollator

__all__ = ["ClassificationDataConfig", "DataConfig", "DataError", "DataInfo", "MLMCollator", "MaskingConfig",
           "StreamConfig", "StreamingDataConfig", "build_dataloader", "prepare"]
