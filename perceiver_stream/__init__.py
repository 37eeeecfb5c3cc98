"""perceiver-stream: pretrain Perceiver IO masked language models on streamed shards."""

__version__ = "0.1.0"
