"""perceiver-stream: pretrain Perceiver IO masked language models on streamed shards."""

from importlib.metadata import PackageNotFoundError, version

try:  # pyproject.toml holds the version; a checkout that was never installed has none
    __version__ = version("perceiver-stream")
except PackageNotFoundError:
    __version__ = "0+unknown"
