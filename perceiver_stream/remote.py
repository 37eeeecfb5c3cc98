"""Object storage (``s3://`` and any S3-compatible endpoint, ``gs://``, ``oci://``): the few operations the converter
and the trainer need, on Composer's object stores (boto3 for S3, reading ``S3_ENDPOINT_URL`` and the ``AWS_*``
variables as streaming does), each failure one line naming the object."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from perceiver_stream.errors import first_line


class RemoteError(RuntimeError):
    """An object store that cannot be reached or refuses an operation; one line naming the object."""


def is_remote(path: str | Path | None) -> bool:
    """Whether ``path`` is an object-store URI (``scheme://...``) rather than a local path."""
    return path is not None and "://" in str(path) and not str(path).startswith("file://")


def _store(uri: str):
    """Composer's object store for ``uri``'s bucket, and the key prefix ``uri`` names inside it."""
    from composer.utils.file_helpers import parse_uri

    backend, bucket, prefix = parse_uri(uri)
    return _bucket_store(backend, bucket, os.environ.get("S3_ENDPOINT_URL")), prefix.strip("/")


@functools.lru_cache(maxsize=16)
def _bucket_store(backend: str, bucket: str, endpoint: str | None):
    """One client per bucket (and endpoint): making a boto3 client costs about a third of a second."""
    from composer.utils.file_helpers import maybe_create_object_store_from_uri

    try:
        return maybe_create_object_store_from_uri(f"{backend}://{bucket}/")
    except (NotImplementedError, ImportError, ValueError) as e:
        raise RemoteError(f"{backend}://{bucket}: no object store for {backend}:// ({first_line(e)})") from None


def _failed(what: str, uri: str, error: Exception) -> RemoteError:
    return RemoteError(f"{what} {uri}: {type(error).__name__}: {first_line(error)}")


def list_objects(uri: str) -> list[str]:
    """The names of the objects under ``uri``, relative to it, sorted."""
    store, prefix = _store(uri)
    try:
        keys = store.list_objects(prefix + "/" if prefix else "")
    except Exception as e:  # noqa: BLE001 - botocore's and the other clients' errors have no common base
        raise _failed("cannot list", uri, e) from None
    start = len(prefix) + 1 if prefix else 0
    return sorted(key[start:] for key in keys)


def upload(local: Path, uri: str) -> None:
    """Upload the file ``local`` as the object ``uri``."""
    store, key = _store(uri)
    try:
        store.upload_object(key, str(local))
    except Exception as e:  # noqa: BLE001
        raise _failed("cannot upload", uri, e) from None


def download(uri: str, local: Path) -> None:
    """Download the object ``uri`` to ``local`` (written under a temporary name, renamed when complete)."""
    store, key = _store(uri)
    local.parent.mkdir(parents=True, exist_ok=True)
    try:
        store.download_object(key, str(local), overwrite=True)
    except Exception as e:  # noqa: BLE001
        raise _failed("cannot download", uri, e) from None


def delete(uri: str) -> None:
    """Delete the object ``uri`` (S3 and S3-compatible stores; Composer's other stores cannot delete)."""
    store, key = _store(uri)
    client = getattr(store, "client", None)
    if not hasattr(client, "delete_object"):
        raise RemoteError(f"cannot delete {uri}: deleting objects is implemented for s3:// only")
    try:
        client.delete_object(Bucket=store.bucket, Key=key)
    except Exception as e:  # noqa: BLE001
        raise _failed("cannot delete", uri, e) from None


def move(uri: str, to: str) -> None:
    """Rename the object ``uri`` to ``to`` in the same bucket (a copy, then the original deleted; S3 only)."""
    store, key = _store(uri)
    _, target = _store(to)
    client = getattr(store, "client", None)
    if not hasattr(client, "copy_object"):
        raise RemoteError(f"cannot move {uri}: renaming objects is implemented for s3:// only")
    try:
        client.copy_object(Bucket=store.bucket, Key=target, CopySource={"Bucket": store.bucket, "Key": key})
    except Exception as e:  # noqa: BLE001
        raise _failed("cannot copy", uri, e) from None
    delete(uri)


def s3_client(uri: str):
    """The boto3 client of ``uri``'s bucket (``s3://`` only): for the conditional requests Composer's store lacks."""
    store, _ = _store(uri)
    client = getattr(store, "client", None)
    if not hasattr(client, "put_object"):
        raise RemoteError(f"{uri}: not an S3 bucket")
    return client
