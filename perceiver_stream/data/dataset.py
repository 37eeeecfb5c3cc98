"""StreamingDataset streams from the yaml, checked against their manifests, batched by the MLM collator (or, for a
classifier, the classification collator)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from streaming import Stream, StreamingDataLoader, StreamingDataset
from streaming.base.compression import decompress
from streaming.base.distributed import get_local_rank
from streaming.base.storage import CloudDownloader
from transformers import PreTrainedTokenizerFast

from perceiver_stream.data.classification import ClassificationCollator
from perceiver_stream.data.config import ClassificationDataConfig, StreamConfig, StreamingDataConfig
from perceiver_stream.data.format import IDS_COLUMN, LABEL_COLUMN, MANIFEST, MANIFEST_FORMAT, TYPES_COLUMN
from perceiver_stream.data.masking import MLMCollator
from perceiver_stream.data.shared_memory import shared_memory_registration
from perceiver_stream.data.tokenizer import TokenizerLoadError, fingerprints, load_tokenizer
from perceiver_stream.digest import file_xxh64
from perceiver_stream.errors import first_line

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Shards that cannot be trained on as configured; the message names the stream, split and file."""


class ShardDownloadError(DataError):
    """A shard that could not be downloaded. Raised in a loader worker, it reaches the main process as torch's
    "Caught ... in DataLoader worker process ... Original Traceback ..." text; ``str`` is still the one line."""

    def __str__(self) -> str:
        lines = super().__str__().strip().splitlines() or [""]
        return lines[-1].removeprefix(f"{type(self).__module__}.{type(self).__qualname__}: ")


class MLMStreamingDataset(StreamingDataset):
    """A ``StreamingDataset`` whose records carry their global sample index and epoch (and their label, in
    labelled shards).

    The collator derives every mask from (seed, epoch, sample index), which is what makes masks independent
    of workers, world size and resumption.
    """

    _epoch = 0

    def _resume_incr_epoch(self) -> tuple[int, int]:
        # Each worker resolves its epoch here; keep it (the shared next_epoch is written after a barrier).
        epoch, sample_in_epoch = super()._resume_incr_epoch()
        self._epoch = epoch
        return epoch, sample_in_epoch

    _download_error: str | None = None

    def prepare_shard(self, shard_id: int, blocking: bool = True) -> None:
        """Streaming's, with a shard that cannot be downloaded (after ``data.download_retry`` retries) reported as
        one line naming it and the endpoint: in streaming's download thread the error would print a traceback and
        the loader stop with "Background thread failed. Check other traceback"."""
        try:
            super().prepare_shard(shard_id, blocking)
        except Exception as e:  # noqa: BLE001 - botocore's and the other clients' errors have no common base
            stream = self.streams[self.stream_per_shard[shard_id]]
            if stream.remote is None:
                raise
            shard = self.shards[shard_id]
            where = "/".join(part.strip("/") for part in (stream.remote, stream.split,
                                                          (shard.zip_data or shard.raw_data).basename) if part)
            endpoint = os.environ.get("S3_ENDPOINT_URL", "the default endpoint")
            self._download_error = (f"cannot download shard {where} ({endpoint}) in {stream.download_retry + 1} "
                                    f"attempts: {type(e).__name__}: {first_line(e)}")
            if threading.current_thread() is threading.main_thread():
                raise ShardDownloadError(self._download_error) from None
            self._event.set()  # stops streaming's threads; the iterator raises (see __iter__)

    def __iter__(self):
        try:
            yield from super().__iter__()
        except RuntimeError:
            if self._download_error is not None:
                raise ShardDownloadError(self._download_error) from None
            raise

    def get_item(self, sample_id: int, retry: int = 7) -> dict[str, Any]:
        record = super().get_item(sample_id, retry)
        item = {"input_ids": record[IDS_COLUMN], "token_type": record[TYPES_COLUMN], "sample_idx": sample_id,
                "epoch": self._epoch}
        if LABEL_COLUMN in record:
            item["label"] = record[LABEL_COLUMN]
        return item


@dataclass
class DataInfo:
    """The configured tokenizer, its fingerprints (``data.tokenizer.fingerprints``: what is recorded now, then what
    shards and checkpoints of earlier releases recorded), each stream's manifest and the ``(local, remote)`` its
    loader reads (``loader_paths``) by ``(stream, split)``, and for labelled shards their label vocabulary."""

    tokenizer: PreTrainedTokenizerFast
    tokenizer_fingerprints: tuple[str, ...]
    manifests: dict[tuple[str, str], dict]
    paths: dict[tuple[str, str], tuple[str, str | None]]
    labels: list[str] | None = None

    @property
    def tokenizer_fingerprint(self) -> str:
        """The fingerprint new shards and checkpoints record."""
        return self.tokenizer_fingerprints[0]


def _split_paths(stream: StreamConfig, split: str) -> tuple[str, str | None]:
    remote = None if stream.remote is None else f"{stream.remote.rstrip('/')}/{split}"
    return os.path.join(stream.local, split), remote


def loader_paths(name: str, stream: StreamConfig, split: str, cache_dir: str) -> tuple[str, str | None]:
    """Where streaming reads a split from (``local``) and fetches it from (``remote``). A ``local`` split on a
    read-only filesystem (a shared dataset volume) whose shards are still compressed cannot be decompressed in place:
    it is read as the stream's remote, its shards copied and decompressed into ``cache_dir``; one read-only but
    decompressed (or never compressed) is read in place."""
    local, remote = _split_paths(stream, split)
    if remote is None and not os.access(local, os.W_OK) and _compressed_only(Path(local)):
        key = hashlib.sha256(os.path.realpath(stream.local).encode()).hexdigest()[:12]
        cache = Path(cache_dir).expanduser() / f"{name}-{key}" / split
        log.info("stream %r (%s): %s is read-only and its shards compressed; decompressing them into %s "
                 "(data.cache_dir)", name, split, local, cache)
        return str(cache), local
    return local, remote


def _compressed_only(split_dir: Path) -> bool:
    """Whether a shard of the split has no decompressed copy beside it (streaming reads the decompressed one)."""
    index = split_dir / "index.json"
    if not index.exists():
        return False
    return any(shard.get("zip_data") and not (split_dir / shard["raw_data"]["basename"]).exists()
               for shard in read_json(index, str(split_dir))["shards"])


def read_manifest(name: str, stream: StreamConfig, split: str, timeout: float) -> dict:
    """The manifest of one split, fetched from the remote into the local directory when needed."""
    local, remote = _split_paths(stream, split)
    path = Path(local) / MANIFEST
    if not path.exists() and remote is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            CloudDownloader.direct_download(f"{remote}/{MANIFEST}", str(path), timeout)
        except Exception as e:  # every storage backend raises its own error type
            raise DataError(f"stream {name!r} ({split}): cannot fetch {remote}/{MANIFEST}: {e}") from None
    if not path.exists():
        raise DataError(f"stream {name!r} ({split}): no {path}; convert the corpus with perceiver-convert and "
                        f"point data.streams.{name}.local (or .remote) at its output")
    return load_manifest(path, f"stream {name!r} ({split})")


def load_manifest(path: Path, what: str) -> dict:
    """The manifest at ``path``, or a ``DataError`` naming ``what`` (a stream and split, a key) when it is not JSON
    or not of this project's format."""
    manifest = read_json(path, what)
    if manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{what}: {path} has format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    return manifest


def check_manifest(what: str, manifest: dict, *, tokenizer: str, tokenizer_fingerprints: tuple[str, ...],
                   vocab_size: int, max_seq_len: int) -> None:
    """Refuse shards converted with another tokenizer, vocabulary or sequence length than the run's (``tokenizer``
    is ``data.tokenizer``, ``tokenizer_fingerprints`` its fingerprints, any of which the shards may record); ``what``
    names the shards in the error (a stream and split, a key)."""
    found_and_accepted = {
        "tokenizer fingerprint": (manifest["tokenizer"]["fingerprint"], tokenizer_fingerprints),
        "vocab size": (manifest["tokenizer"]["vocab_size"], (vocab_size,)),
        "max_seq_len": (manifest["max_seq_len"], (max_seq_len,)),
    }
    for setting, (found, accepted) in found_and_accepted.items():
        if found not in accepted:
            raise DataError(
                f"{what}: shards have {setting} {found} (tokenizer {manifest['tokenizer']['name']!r}) but the "
                f"configuration has {accepted[0]} (data.tokenizer={tokenizer!r}, data.max_seq_len={max_seq_len}); "
                "reconvert with the run's tokenizer and max_seq_len, or fix the configuration"
            )


def read_json(path: Path, what: str) -> Any:
    """``path`` parsed, or a ``DataError`` naming the file when it is not JSON (truncated, overwritten)."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{what}: {path} is not valid JSON ({e}); it is truncated or overwritten, "
                        "reconvert the corpus or copy the file again") from None


def _mismatch(path: Path, data: dict) -> str | None:
    """The file's xxh64 when it differs from the one ``index.json`` records for it, else None."""
    expected = data.get("hashes", {}).get("xxh64")
    if expected is None:
        return None
    found = file_xxh64(path)
    return None if found == expected else found


def verify_shards(name: str, split_dir: Path) -> int:
    """Check each shard listed in ``index.json`` against its xxh64 hash and write the decompressed ``.mds`` of
    each compressed one that lacks it; returns the count.

    Streaming reads the decompressed ``.mds`` beside a ``.mds.zstd``, so that file is what training reads: it is
    checked too, and a corrupted one is replaced (with a warning). Left to streaming, a missing one is written on
    first read under one fixed temporary name, which two jobs starting together on new shards would both write
    into; here it is written under a name of its own and renamed into place.
    """
    index_path = split_dir / "index.json"
    if not index_path.exists():
        raise DataError(f"stream {name!r}: missing {index_path}")
    shards = read_json(index_path, f"stream {name!r}")["shards"]
    for shard in shards:
        raw, zipped = shard["raw_data"], shard.get("zip_data")
        data = zipped or raw
        path = split_dir / data["basename"]
        if not path.exists():
            raise DataError(f"stream {name!r}: missing shard {path}")
        if (found := _mismatch(path, data)) is not None:
            raise DataError(f"stream {name!r}: shard {path} is corrupted (xxh64 {found}, index.json says "
                            f"{data['hashes']['xxh64']})")
        if not zipped:
            continue
        raw_path = split_dir / raw["basename"]
        if raw_path.exists():
            if (found := _mismatch(raw_path, raw)) is None:
                continue
            log.warning("stream %r: decompressed shard %s is corrupted (xxh64 %s, index.json says %s); replacing it "
                        "with the one decompressed from the verified %s", name, raw_path, found,
                        raw["hashes"]["xxh64"], zipped["basename"])
        try:
            _write_decompressed(path, shard["compression"], raw_path)
        except OSError as e:
            raise DataError(f"stream {name!r}: cannot write the decompressed shard {raw_path} ({e.strerror}); restore "
                            "it, or remove the directory's decompressed shards so that it is read through "
                            "data.cache_dir") from None
    return len(shards)


def _write_decompressed(zipped: Path, compression: str, raw: Path) -> None:
    """``zipped`` decompressed into ``raw``, which never exists half-written."""
    with tempfile.NamedTemporaryFile(dir=raw.parent, prefix=f"{raw.name}.", suffix=".tmp", delete=False) as tmp:
        try:
            tmp.write(decompress(compression, zipped.read_bytes()))
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, raw)


def prepare(cfg: StreamingDataConfig, splits: tuple[str, ...] = ("train", "val")) -> DataInfo:
    """Load the tokenizer and check every stream's manifests (and local shards) before anything heavy.

    Shards are hashed by local rank 0 only: the ranks of a node read the same files.
    """
    try:
        tokenizer = load_tokenizer(cfg.tokenizer)
    except TokenizerLoadError as e:
        raise DataError(f"data.tokenizer={e}") from None
    tokenizer_fingerprints = fingerprints(tokenizer)
    check_distinct_streams(cfg)
    manifests, paths = {}, {}
    for name, stream in cfg.streams.items():
        for split in splits:
            manifest = read_manifest(name, stream, split, cfg.download_timeout)
            check_manifest(f"stream {name!r} ({split})", manifest, tokenizer=cfg.tokenizer,
                           tokenizer_fingerprints=tokenizer_fingerprints, vocab_size=len(tokenizer),
                           max_seq_len=cfg.max_seq_len)
            if manifest["counts"]["samples"] == 0:
                if split == "train":
                    raise DataError(f"stream {name!r} (train) has no samples: {manifest['counts']}")
                log.warning("stream %r has no %s samples (its documents all fell in train); evaluating on the "
                            "other streams", name, split)
                continue
            local, remote = loader_paths(name, stream, split, cfg.cache_dir)
            if cfg.verify_shards and remote is None and get_local_rank() == 0:
                verify_shards(name, Path(local))
            manifests[(name, split)] = manifest
            paths[(name, split)] = (local, remote)
    if "val" in splits and not any(split == "val" for _, split in manifests):
        raise DataError("no stream has val samples; reconvert with a larger --val-fraction")
    labels = label_vocabulary(manifests) if isinstance(cfg, ClassificationDataConfig) else None
    return DataInfo(tokenizer, tokenizer_fingerprints, manifests, paths, labels)


def check_distinct_streams(cfg: StreamingDataConfig) -> None:
    """Every stream its own directory (streaming refuses to read one twice, with a traceback), and proportions
    that do not sum to 1 named with the shares streaming normalises them to."""
    seen: dict[str, str] = {}
    for name, stream in cfg.streams.items():
        for where, place in (("local", stream.local), ("remote", stream.remote)):
            if place is None:
                continue
            key = f"{where}:{place.rstrip('/') if '://' in place else os.path.realpath(place)}"
            if key in seen:
                raise DataError(f"data.streams.{seen[key]}.{where} and data.streams.{name}.{where} are the same "
                                f"directory ({place}); give every stream its own")
            seen[key] = name
    proportions = {name: stream.proportion for name, stream in cfg.streams.items()}
    if None not in proportions.values():
        total = sum(proportions.values())
        if abs(total - 1.0) > 1e-6:
            log.warning("data.streams.*.proportion sum to %.4g, not 1; each training epoch draws %s", total,
                        ", ".join(f"{name} {share / total:.4g}" for name, share in proportions.items()))


def label_vocabulary(manifests: dict[tuple[str, str], dict]) -> list[str]:
    """The labels every labelled stream shares (a sample's label is an index into them), or a ``DataError``."""
    vocabularies = {}
    for (name, split), manifest in manifests.items():
        if "labels" not in manifest:
            raise DataError(f"stream {name!r} ({split}) holds no labels: a classifier trains on labelled shards; "
                            "convert them with perceiver-convert labelled (or rotten-tomatoes, bbc-news)")
        vocabularies[f"{name} ({split})"] = manifest["labels"]
    distinct = {tuple(labels) for labels in vocabularies.values()}
    if len(distinct) > 1:
        raise DataError("the streams have different labels: " + "; ".join(
            f"{where}: {labels}" for where, labels in vocabularies.items()) + "; convert them with the same --labels")
    return list(distinct.pop())


def build_dataloader(cfg: StreamingDataConfig, info: DataInfo, split: str, batch_size: int,
                     seed: int) -> StreamingDataLoader:
    """A loader over ``split`` of every stream; ``batch_size`` is per device and also the dataset's.

    With more than one rank, torch.distributed must be initialized first (see ``shared_memory_registration``).
    """
    train = split == "train"
    streams = []
    for name, stream in cfg.streams.items():
        if (name, split) not in info.paths:  # an empty split (see prepare)
            continue
        local, remote = info.paths[(name, split)]
        streams.append(Stream(local=local, remote=remote, proportion=stream.proportion if train else None))
    with shared_memory_registration():
        dataset = MLMStreamingDataset(
            streams=streams, batch_size=batch_size, shuffle=cfg.shuffle and train, shuffle_algo=cfg.shuffle_algo,
            shuffle_seed=cfg.shuffle_seed, shuffle_block_size=cfg.shuffle_block_size,
            num_canonical_nodes=cfg.num_canonical_nodes, predownload=cfg.predownload,
            epoch_size=cfg.epoch_size if train else None, cache_limit=cfg.cache_limit,
            download_retry=cfg.download_retry, download_timeout=cfg.download_timeout, validate_hash=cfg.validate_hash,
        )
    tokenizer = info.tokenizer
    if isinstance(cfg, ClassificationDataConfig):
        collator = ClassificationCollator()
    else:
        collator = MLMCollator(
            cfg.masking_config(), tokenizer.mask_token_id, tokenizer.all_special_ids, len(tokenizer),
            seed=seed if cfg.masking_seed is None else cfg.masking_seed,
        )
    workers = cfg.num_workers
    return StreamingDataLoader(
        dataset, batch_size=batch_size, collate_fn=collator, num_workers=workers, drop_last=train,
        pin_memory=cfg.pin_memory and torch.cuda.is_available(),
        prefetch_factor=cfg.prefetch_factor if workers else None,
        persistent_workers=cfg.persistent_workers and workers > 0,
    )
