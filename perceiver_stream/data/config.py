"""The ``data:`` section of the yaml."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from perceiver_stream.data.masking import MaskingConfig


@dataclass
class StreamConfig:
    """One stream of shards, as written by ``perceiver-convert`` (``train/`` and ``val/`` inside).

    Attributes:
        local: local directory holding (or caching) the stream's ``train`` and ``val`` splits.
        remote: where the splits live when not local (any streaming remote: a path, ``s3://``, ``gs://``, ...).
        proportion: share of each training epoch drawn from this stream (None: by size); proportions that do not
            sum to 1 are normalised (a warning names the shares).
    """

    local: str
    remote: str | None = None
    proportion: float | None = None


@dataclass
class StreamingDataConfig:
    """Streams, tokenizer and loader settings, for every task.

    Attributes:
        tokenizer: hub name or local directory; shards must have been converted with exactly this tokenizer.
        max_seq_len: tokens per sample; must equal the shards'.
        streams: named streams, e.g. ``wikipedia`` and ``bookcorpus``; ``<name>: null`` switches one off.
        shuffle, shuffle_algo, shuffle_seed, shuffle_block_size, num_canonical_nodes, predownload,
            epoch_size, cache_limit, download_retry, download_timeout, validate_hash: passed to
            ``StreamingDataset`` (``epoch_size`` and ``shuffle`` apply to training only). ``cache_limit`` bounds
            the local caches of all streams together (streaming's); ``download_retry`` retries a failed shard
            download that many times, each given ``download_timeout`` seconds.
        verify_shards: before training, check that every local shard exists and matches its xxh64 hash, and
            decompress the ones not yet decompressed (otherwise streaming does it on first read).
        cache_dir: where the shards of a stream whose ``local`` directory is read-only (a shared dataset volume)
            and still compressed are decompressed to, under a folder per stream; a read-only directory of
            decompressed shards is read in place.
        num_workers, prefetch_factor, persistent_workers, pin_memory: ``DataLoader`` settings per device.
    """

    streams: dict[str, StreamConfig | None] = field(default_factory=dict)
    tokenizer: str = "xlnet-base-cased"
    max_seq_len: int = 512
    shuffle: bool = True
    shuffle_algo: str = "py1e"
    shuffle_seed: int = 9176
    shuffle_block_size: int | None = None
    num_canonical_nodes: int | None = None
    predownload: int | None = None
    epoch_size: int | None = None
    cache_limit: int | str | None = None
    download_retry: int = 2
    download_timeout: float = 60.0
    validate_hash: str | None = "xxh64"
    verify_shards: bool = True
    cache_dir: str = "~/.cache/perceiver-stream/shards"
    num_workers: int = 6
    prefetch_factor: int = 2
    persistent_workers: bool = True
    pin_memory: bool = True

    def __post_init__(self) -> None:
        # data.streams.<name>=null switches a stream off
        self.streams = {name: s for name, s in (self.streams or {}).items() if s is not None}
        if not self.streams:
            raise ValueError("data.streams: at least one stream is needed (e.g. data.streams.wikipedia.local=DIR)")
        proportions = [s.proportion for s in self.streams.values()]
        if any(p is not None for p in proportions) and any(p is None for p in proportions):
            raise ValueError("data.streams.*.proportion: give every stream a proportion, or none")


@dataclass
class DataConfig(MaskingConfig, StreamingDataConfig):
    """The MLM's data (the blueprint's ``--data.*``): ``StreamingDataConfig``'s streams, tokenizer and loader
    settings, and the masking keys (``masking``, ``mask_prob``, ``mask_replace_prob``, ``random_replace_prob``),
    ``MaskingConfig``'s fields, with ``masking_seed``.

    Attributes:
        masking_seed: seed of the masks (None: the run's ``seed``).
    """

    masking_seed: int | None = None

    def __post_init__(self) -> None:
        MaskingConfig.__post_init__(self)
        StreamingDataConfig.__post_init__(self)

    def masking_config(self) -> MaskingConfig:
        return MaskingConfig(**{f.name: getattr(self, f.name) for f in fields(MaskingConfig)})


@dataclass
class ClassificationDataConfig(StreamingDataConfig):
    """A classifier's data: streams of labelled shards (``perceiver-convert labelled``), no masking."""
