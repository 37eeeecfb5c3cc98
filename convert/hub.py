"""Hugging Face hub datasets as conversion input: parquet repositories, cached or streamed, split among workers.

``datasets`` >= 4 no longer runs loading scripts, so the blueprint's ``wikipedia`` and ``bookcorpus``
repositories do not load any more; the defaults are parquet repositories (docs/converting.md).
A dataset is named ``NAME[:CONFIG][@REVISION]``; NAME may also be a local directory laid out like a hub
dataset. The main process opens each dataset once before any worker starts (downloading it unless streaming,
resolving the revision to a commit), so that a failure is one line naming the dataset, and every worker then
reads the same commit.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from perceiver_stream.convert.input import InputError, Stats
from perceiver_stream.errors import first_line

WIKIPEDIA = "wikimedia/wikipedia:20231101.en"
BOOKCORPUS = "SamuelYang/bookcorpus@refs/convert/parquet"
_COMMIT = re.compile(r"@([0-9a-f]{40})/")


@dataclass(frozen=True)
class HubSpec:
    """``NAME[:CONFIG][@REVISION]`` of a hub dataset (or local directory), parsed."""

    name: str
    config: str | None = None
    revision: str | None = None

    @classmethod
    def parse(cls, text: str, option: str) -> HubSpec:
        rest, _, revision = text.partition("@")
        name, _, config = rest.partition(":")
        if not name or (":" in rest and not config) or ("@" in text and not revision):
            raise InputError(f"{option} {text!r}: expected NAME[:CONFIG][@REVISION], e.g. {WIKIPEDIA}")
        return cls(name, config or None, revision or None)

    def __str__(self) -> str:
        return self.name + (f":{self.config}" if self.config else "") + (f"@{self.revision}" if self.revision else "")


def _revision(spec: HubSpec) -> dict[str, str]:
    """``revision=`` for ``datasets``' loaders; a local directory has none."""
    return {} if spec.revision is None or os.path.isdir(spec.name) else {"revision": spec.revision}


def _load(spec: HubSpec, split: str, streaming: bool):
    from datasets import load_dataset

    return load_dataset(spec.name, spec.config, split=split, streaming=streaming, **_revision(spec))


def _failure(spec: HubSpec, error: Exception) -> str:
    """One line: what went wrong loading ``spec`` and what to do about it."""
    message = first_line(error)
    local = os.path.isdir(spec.name)
    if "Dataset scripts are no longer supported" in message:
        hint = ("it is a loading-script dataset, which datasets >= 4 no longer runs; name a parquet repository, or "
                f"add @refs/convert/parquet for the hub's parquet export (e.g. {spec.name}@refs/convert/parquet)")
    elif "BuilderConfig" in message or "config" in message.lower():
        hint = "no such config; pass NAME:CONFIG with one of the dataset's configs"
    elif not local and (isinstance(error, ConnectionError | FileNotFoundError) or "reach" in message
                        or os.environ.get("HF_HUB_OFFLINE") == "1"):
        hint = ("the hub is unreachable (HF_HUB_OFFLINE=1 or no network) and it is not in the local cache; connect, "
                "pre-populate the HF cache, or pass a local directory laid out like the hub dataset")
    elif local:
        hint = "a data file in that directory is unreadable or not a dataset file (parquet, arrow, json, csv)"
    else:
        hint = "check NAME[:CONFIG][@REVISION] and that the repository holds data files (parquet, arrow, json)"
    return f"hub dataset {spec}: cannot load ({message}); {hint}"


def _check_text(spec: HubSpec, dataset, text_field: str) -> None:
    columns = dataset.column_names
    if columns is None:  # a stream whose features are unknown until read
        columns = list(next(iter(dataset.take(1)), {}).keys())
    if text_field not in columns:
        raise InputError(f"hub dataset {spec}: no {text_field!r} column (columns: {columns}); pass --text-field")
    features = dataset.features
    kind = None if features is None or text_field not in features else getattr(features[text_field], "dtype", None)
    if kind not in (None, "string", "large_string"):
        raise InputError(f"hub dataset {spec}: column {text_field!r} holds {kind}, not text; pass --text-field")


def prepare(spec: HubSpec, split: str, streaming: bool, text_field: str) -> str | None:
    """Open the dataset once in the main process (a non-streaming load downloads and caches it here, so
    workers read the cache) and check its text column; returns the commit the revision resolves to (None for
    a local directory)."""
    try:
        dataset = _load(spec, split, streaming)
        _check_text(spec, dataset, text_field)
        from datasets import load_dataset_builder

        files = load_dataset_builder(spec.name, spec.config, **_revision(spec)).config.data_files or {}
    except InputError:
        raise
    except Exception as error:  # noqa: BLE001 - datasets and the hub raise many types; each becomes one line
        raise InputError(_failure(spec, error)) from None
    paths = [str(p) for split_files in files.values() for p in split_files]
    commits = {m.group(1) for p in paths if (m := _COMMIT.search(p))}
    return commits.pop() if len(commits) == 1 else None


def documents(spec: HubSpec, split: str, streaming: bool, text_field: str, share: tuple[int, int],
              stats: Stats) -> Iterator[str]:
    """Worker ``k`` of ``n``'s texts: rows k, k + n, ... of a cached dataset; of a stream, whole parquet files
    dealt out (when their count divides among the workers; otherwise every n-th row), so that each worker
    downloads and tokenizes only its share. Null texts are counted and skipped."""
    k, n = share
    try:
        dataset = _load(spec, split, streaming)
        if streaming:
            from datasets.distributed import split_dataset_by_node

            dataset = split_dataset_by_node(dataset, rank=k, world_size=n)
        else:
            dataset = dataset.shard(num_shards=n, index=k, contiguous=False)
        for batch in dataset.iter(batch_size=1024):
            for text in batch[text_field]:
                if text is None:
                    stats.skipped["null_text"] += 1
                else:
                    yield text
    except InputError:
        raise
    except Exception as error:  # noqa: BLE001 - in a worker: one line in the parent, not a remote traceback
        raise InputError(_failure(spec, error)) from None
