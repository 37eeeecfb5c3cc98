"""A run owns its save folder: one lock per ``save_folder``, held by global rank 0 from before the Trainer starts to
the run's end.

Two runs writing checkpoints into one folder (a job requeued while its first copy still runs, a sweep given one
name) would each resume from whatever the other wrote last. The second one is refused with one line naming the
holder. The lock is a small JSON record (host, pid, start time, run name, a token of its own): locally a file created
with ``O_EXCL``, in an S3 bucket an object written with a conditional put (``If-None-Match``, renewed and released
with ``If-Match``), so that two runs starting at once cannot both win. A holder renews it every third of
``LEASE_SECONDS``; one that stopped renewing (its node lost) is stale once the lease is past, and one whose process is
gone on this host at once. A stale lock is taken over with a warning naming it. ``gs://`` and ``oci://`` folders are
not locked (Composer's stores there offer no conditional write), and a warning says so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from perceiver_stream.errors import first_line
from perceiver_stream.remote import is_remote

log = logging.getLogger(__name__)

LOCK_NAME = "perceiver-stream.lock"
LEASE_SECONDS = 120.0


class SaveFolderInUse(RuntimeError):
    """Another live run holds the save folder, or took it from this one; one line naming it."""


@dataclass(frozen=True)
class Holder:
    """Who holds a save folder, as its lock records it; ``renewed`` is when it last renewed the lease."""

    host: str
    pid: int
    since: float
    run_name: str
    token: str
    renewed: float

    def __str__(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return f"run {self.run_name!r} (host {self.host}, pid {self.pid}, since {since})"

    def stale_because(self, now: float) -> str | None:
        """Why this holder no longer holds the folder, or None while it may."""
        if self.host == socket.gethostname() and not _alive(self.pid, self.since):
            return "its process is gone"
        if now > self.renewed + LEASE_SECONDS:
            return f"it has not renewed its lease for {now - self.renewed:.0f} s"
        return None

    @staticmethod
    def parse(data: bytes, written: float) -> Holder:
        """The holder a lock records; an unreadable lock (written by no run of ours, or caught half-written) is an
        unknown holder last renewed when the lock was ``written``."""
        try:
            return Holder(**json.loads(data))
        except (ValueError, TypeError):
            return Holder("unknown", 0, written, "unknown", "", written)


def _alive(pid: int, since: float) -> bool:
    """Whether process ``pid`` exists and started no later than ``since`` (a later one reuses a dead holder's pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: the process's start, in clock ticks after boot
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return True
    return boot + ticks / os.sysconf("SC_CLK_TCK") <= since + 1.0


class _LocalLock:
    """The lock file in a local (or network-mounted) save folder; its modification time is the lease's renewal."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_NAME
        self.where = str(self.path)

    def create(self, record: bytes) -> bool:
        """Write ``record`` unless a lock exists (then False)."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(record)
        return True

    def read(self) -> Holder | None:
        try:
            data, renewed = self.path.read_bytes(), self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        return replace(Holder.parse(data, renewed), renewed=renewed)

    def take_over(self, stale: Holder, record: bytes) -> bool:
        """Replace the stale lock; False when another run got there first. Renaming it away is the claim: of two
        runs taking over at once, one finds the file gone (or, renaming the winner's new lock, puts it back)."""
        claimed = self.path.with_name(f"{LOCK_NAME}.{secrets.token_hex(4)}.stale")
        try:
            os.rename(self.path, claimed)
        except FileNotFoundError:
            return False
        if Holder.parse(claimed.read_bytes(), 0.0).token != stale.token:
            with contextlib.suppress(FileExistsError):
                os.link(claimed, self.path)
            claimed.unlink()
            return False
        claimed.unlink()
        return self.create(record)

    def renew(self, holder: Holder) -> bool:
        current = self.read()
        if current is None or current.token != holder.token:
            return False
        os.utime(self.path)
        return True

    def release(self, holder: Holder) -> None:
        current = self.read()
        if current is not None and current.token == holder.token:
            self.path.unlink(missing_ok=True)


class _S3Lock:
    """The lease object in an S3 (or S3-compatible) bucket, written only by conditional requests: created with
    ``If-None-Match: *``, renewed, taken over and deleted with ``If-Match`` on the ETag last seen."""

    def __init__(self, folder: str):
        from composer.utils.file_helpers import parse_uri

        from perceiver_stream.remote import s3_client

        _, self.bucket, prefix = parse_uri(folder)
        self.key = f"{prefix.strip('/')}/{LOCK_NAME}".lstrip("/")
        self.where = f"s3://{self.bucket}/{self.key}"
        self.client = s3_client(folder)
        self.etag: str | None = None  # of this run's last write
        self.seen: str | None = None  # of the lock last read

    def _put(self, record: bytes, **condition: str) -> bool:
        try:
            self.etag = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=record, **condition)["ETag"]
            return True
        except Exception as e:  # noqa: BLE001 - botocore's ClientError
            if _code(e) in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise

    def create(self, record: bytes) -> bool:
        return self._put(record, IfNoneMatch="*")

    def read(self) -> Holder | None:
        try:
            found = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except Exception as e:  # noqa: BLE001
            if _code(e) in ("NoSuchKey", "404"):
                return None
            raise
        self.seen = found["ETag"]
        return Holder.parse(found["Body"].read(), found["LastModified"].timestamp())

    def take_over(self, stale: Holder, record: bytes) -> bool:
        return self.seen is not None and self._put(record, IfMatch=self.seen)

    def renew(self, holder: Holder) -> bool:
        record = json.dumps({**asdict(holder), "renewed": time.time()}).encode()
        return self.etag is not None and self._put(record, IfMatch=self.etag)

    def release(self, holder: Holder) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
        except Exception as e:  # noqa: BLE001 - taken by another run meanwhile, or the store unreachable
            log.warning("did not release the save folder's lock %s: %s", self.where, first_line(e))


def _code(error: Exception) -> str | None:
    """The S3 error code of a botocore ``ClientError``."""
    return getattr(error, "response", {}).get("Error", {}).get("Code")


class Lease:
    """This run's hold on its save folder, renewed by a thread of its own until ``release``."""

    def __init__(self, lock: _LocalLock | _S3Lock, holder: Holder):
        self.lock, self.holder = lock, holder
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="save-folder-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_SECONDS / 3):
            try:
                renewed = self.lock.renew(self.holder)
            except Exception as e:  # noqa: BLE001 - a store briefly unreachable: the next renewal may succeed
                log.warning("could not renew the save folder's lock %s: %s", self.lock.where, first_line(e))
                continue
            if not renewed:
                taker = self.lock.read()
                self.lost = (f"the save folder's lock {self.lock.where} was taken by "
                             f"{taker if taker is not None else 'another run, which removed it'}")
                log.error("%s; this run stops before writing another checkpoint", self.lost)
                return

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.lost is None:
            self.lock.release(self.holder)


def acquire(folder: str, run_name: str) -> Lease | None:
    """Take the lock of ``folder`` (``{run_name}`` filled in), taking over a stale one; ``SaveFolderInUse`` when a
    live run holds it. None for stores without conditional writes (a warning says the folder is not locked)."""
    if is_remote(folder) and not folder.startswith("s3://"):
        log.warning("save_folder=%s is not locked against a second run (only local and s3:// folders are)", folder)
        return None
    lock: _LocalLock | _S3Lock = _S3Lock(folder) if is_remote(folder) else _LocalLock(Path(folder))
    now = time.time()
    holder = Holder(socket.gethostname(), os.getpid(), now, run_name, secrets.token_hex(8), now)
    record = json.dumps(asdict(holder)).encode()
    while not lock.create(record):
        found = lock.read()
        if found is None:  # released meanwhile
            continue
        why = found.stale_because(time.time())
        if why is None:
            raise SaveFolderInUse(
                f"save_folder={folder} is in use by {found}: two runs writing one folder would resume from each "
                f"other's checkpoints. Wait for it to end (a lock its holder stops renewing expires "
                f"{LEASE_SECONDS:.0f} s after), or if that run is gone, delete {lock.where}")
        if lock.take_over(found, record):
            log.warning("took over the save folder's lock %s from %s: %s", lock.where, found, why)
            break
    return Lease(lock, holder)


@contextmanager
def held(folder: str | None, run_name: str):
    """``acquire`` for the block (nothing without a folder), released however the block ends."""
    lease = None if folder is None else acquire(folder, run_name)
    try:
        yield lease
    finally:
        if lease is not None:
            lease.release()

