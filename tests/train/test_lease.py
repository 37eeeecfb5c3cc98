"""A run owns its save folder (perceiver_stream/train/lease.py): a second live run is refused with one line naming the
holder, a stale lock is taken over with a warning, two runs starting at once cannot both win, the lease is renewed
and released, and a run whose lease was taken stops. Locally and on moto's S3 server; the whole runs (two launches,
kill -9 and a relaunch, SIGTERM, two processes) at the end."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from perceiver_stream.train import lease as lease_module
from perceiver_stream.train.callbacks import LeaseWatch
from perceiver_stream.train.lease import LOCK_NAME, Holder, SaveFolderInUse, acquire
from tests.train.conftest import TINY, tiny_overrides
from tests.train.forked import Run, train


def dead_pid() -> int:
    """The pid of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(folder, **fields) -> dict:
    record = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "run_name": "first",
              "token": "0123456789abcdef", "renewed": time.time(), **fields}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps(record))
    return record


def since(record: dict) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record["since"]))


def refusal(folder: object, record: dict, lock: object) -> str:
    """The line refusing a second run on ``folder`` while ``record``'s holder (on this host) renews ``lock``."""
    return (f"save_folder={folder} is in use by run '{record['run_name']}' (host {socket.gethostname()}, pid "
            f"{record['pid']}, since {since(record)}): two runs writing one folder would resume from each other's "
            f"checkpoints. Wait for it to end (a lock its holder stops renewing expires 120 s after), or if that run "
            f"is gone, delete {lock}")


def test_a_live_holder_refuses_a_second_run_with_one_line_naming_it(tmp_path):
    lease = acquire(str(tmp_path), "first")
    try:
        record = json.loads((tmp_path / LOCK_NAME).read_text())
        assert (record["host"], record["pid"], record["run_name"]) == (socket.gethostname(), os.getpid(), "first")
        with pytest.raises(SaveFolderInUse) as refused:
            acquire(str(tmp_path), "second")
        assert str(refused.value) == refusal(tmp_path, record, tmp_path / LOCK_NAME)
    finally:
        lease.release()
    assert not (tmp_path / LOCK_NAME).exists()
    acquire(str(tmp_path), "second").release()  # free again


@pytest.mark.parametrize("why", ["dead pid", "expired", "unreadable"])
def test_a_stale_lock_is_taken_over_with_a_warning_naming_it(tmp_path, caplog, why):
    record = {}
    if why == "dead pid":
        record = write_lock(tmp_path, pid=dead_pid())
    elif why == "expired":  # another host's holder that stopped renewing (its node lost)
        record = write_lock(tmp_path, host="elsewhere")
        old = time.time() - 121
        os.utime(tmp_path / LOCK_NAME, (old, old))
    else:
        (tmp_path / LOCK_NAME).write_text('{"host": "half-writ')
        old = time.time() - 121
        os.utime(tmp_path / LOCK_NAME, (old, old))
    with caplog.at_level(logging.WARNING, logger="perceiver_stream.train.lease"):
        lease = acquire(str(tmp_path), "second")
    lease.release()
    (warning,) = [r.getMessage() for r in caplog.records if "took over" in r.getMessage()]
    holder = {"dead pid": f"run 'first' (host {socket.gethostname()}, pid {record.get('pid')}",
              "expired": "run 'first' (host elsewhere, pid",
              "unreadable": "run 'unknown' (host unknown, pid 0"}[why]
    reason = "its process is gone" if why == "dead pid" else "it has not renewed its lease for 121 s"
    assert warning.startswith(f"took over the save folder's lock {tmp_path / LOCK_NAME} from {holder}"), warning
    assert warning.endswith(f"): {reason}"), warning


def test_a_fresh_unreadable_lock_is_not_taken(tmp_path):
    """Caught between its holder's create and write: still held."""
    (tmp_path / LOCK_NAME).write_text("")
    with pytest.raises(SaveFolderInUse, match="in use by run 'unknown' \\(host unknown"):
        acquire(str(tmp_path), "second")


def test_a_reused_pid_does_not_keep_a_dead_holders_lock(tmp_path):
    """The lock's pid now names a process that started after the lock was written (this one, here)."""
    write_lock(tmp_path, since=time.time() - 3600 * 24 * 365)
    lease = acquire(str(tmp_path), "second")
    lease.release()


def _race(folder: str, start: float, results) -> None:
    time.sleep(max(0.0, start - time.time()))
    try:
        lease = acquire(folder, f"racer-{os.getpid()}")
        results.put("won")
        time.sleep(1.0)
        lease.release()
    except SaveFolderInUse:
        results.put("refused")


@pytest.mark.parametrize("stale", [False, True])
def test_of_runs_starting_at_once_exactly_one_wins(tmp_path, stale):
    if stale:  # all of them find a dead holder's lock and take it over at once
        write_lock(tmp_path, pid=dead_pid())
    context = mp.get_context("fork")
    results = context.Queue()
    start = time.time() + 0.5
    racers = [context.Process(target=_race, args=(str(tmp_path), start, results)) for _ in range(6)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(30)
    outcomes = sorted(results.get(timeout=5) for _ in racers)
    assert outcomes == ["refused"] * 5 + ["won"]
    assert not (tmp_path / LOCK_NAME).exists() and not list(tmp_path.glob("*.stale"))


def test_the_lease_is_renewed_and_a_run_whose_lease_was_taken_stops(tmp_path, monkeypatch):
    monkeypatch.setattr(lease_module, "LEASE_SECONDS", 0.6)
    lease = acquire(str(tmp_path), "first")
    path = tmp_path / LOCK_NAME
    old = time.time() - 100
    os.utime(path, (old, old))
    time.sleep(0.5)
    assert path.stat().st_mtime > old + 90  # renewed
    watch = LeaseWatch(lease)
    watch.batch_end(None, None)  # still held: nothing happens
    write_lock(tmp_path, run_name="taker", token="fedcba9876543210", host="elsewhere")
    deadline = time.monotonic() + 5
    while lease.lost is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(SaveFolderInUse, match=f"the save folder's lock {path} was taken by run 'taker' "
                                              "\\(host elsewhere, .*\\); stopped so that the two runs"):
        watch.batch_end(None, None)
    lease.release()
    assert json.loads(path.read_text())["run_name"] == "taker"  # the taker's lock is not released by the loser


def test_only_its_own_lock_is_released(tmp_path):
    lease = acquire(str(tmp_path), "first")
    lease.release()
    record = write_lock(tmp_path, run_name="other")
    lease.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == record


def test_on_s3_a_live_holder_refuses_and_an_expired_one_is_taken_over(s3, caplog):
    bucket = s3.bucket()
    folder = f"s3://{bucket}/runs/mlm"
    first = acquire(folder, "first")
    try:
        with pytest.raises(SaveFolderInUse, match=f"save_folder={folder} is in use by run 'first' \\(host "
                                                  f"{socket.gethostname()}, pid {os.getpid()}, .*delete "
                                                  f"s3://{bucket}/runs/mlm/{LOCK_NAME}$"):
            acquire(folder, "second")
    finally:
        first.release()
    assert s3.objects(bucket) == []
    client = s3.client()
    stale = {"host": "elsewhere", "pid": 1, "since": time.time() - 500, "run_name": "lost-node", "token": "t",
             "renewed": time.time() - 200}
    client.put_object(Bucket=bucket, Key=f"runs/mlm/{LOCK_NAME}", Body=json.dumps(stale).encode())
    with caplog.at_level(logging.WARNING, logger="perceiver_stream.train.lease"):
        second = acquire(folder, "second")
    assert any("took over the save folder's lock" in r.getMessage() and "lost-node" in r.getMessage()
               for r in caplog.records)
    held = json.loads(client.get_object(Bucket=bucket, Key=f"runs/mlm/{LOCK_NAME}")["Body"].read())
    assert held["run_name"] == "second"
    second.release()
    assert s3.objects(bucket) == []


def test_on_s3_of_runs_starting_at_once_exactly_one_wins(s3):
    """Conditional puts: threads stand in for runs (each makes its own requests)."""
    import threading

    folder = f"s3://{s3.bucket()}/race"
    outcomes, leases = [], []
    barrier = threading.Barrier(6)

    def race() -> None:
        barrier.wait()
        try:
            leases.append(acquire(folder, "racer"))
            outcomes.append("won")
        except SaveFolderInUse:
            outcomes.append("refused")

    threads = [threading.Thread(target=race) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * 5 + ["won"]
    leases[0].release()


def test_a_folder_in_another_store_is_not_locked_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="perceiver_stream.train.lease"):
        assert acquire("gs://bucket/runs", "run") is None
    assert [r.getMessage() for r in caplog.records] == [
        "save_folder=gs://bucket/runs is not locked against a second run (only local and s3:// folders are)"]


def test_holder_description():
    holder = Holder("h", 7, 0.0, "r", "t", 0.0)
    assert str(holder) == "run 'r' (host h, pid 7, since 1970-01-01 00:00:00 UTC)"


def wait_for(condition, what: str, run=None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if run is not None and run.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {run.result().stderr[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


@pytest.mark.slow
def test_runs_on_one_folder_refused_taken_over_after_kill_and_released_on_sigterm(tiny_shards, tmp_path):
    """A run holds its folder; the same command launched again is refused with one line; after a kill -9 a relaunch
    takes the folder over (naming the killed run) and resumes; a two-process run holds it once (rank 0) and
    releases it on SIGTERM."""
    folder = tmp_path / "ckpt"
    lock = folder / LOCK_NAME
    overrides = tiny_overrides(tiny_shards, tmp_path, **{
        "save_folder": folder, "save_interval": "2ba", "autoresume": "true", "max_duration": "400ba",
        "eval_interval": "1000ba", "data.num_workers": 0, "global_train_batch_size": 8,
        "device_train_microbatch_size": 8})
    first = Run([TINY, *overrides], env={"OMP_NUM_THREADS": "1"})
    wait_for(lambda: (folder / "ep0-ba2-rank0.pt").exists(), "its first checkpoint", first)
    holder = json.loads(lock.read_text())
    assert (holder["pid"], holder["run_name"]) == (first.pid, "mlm-tiny")

    second = train([TINY, *overrides])
    assert second.returncode == 2
    assert second.stderr.strip().splitlines()[-1] == "train.py: error: " + refusal(folder, holder, lock)
    assert json.loads(lock.read_text())["pid"] == first.pid  # untouched

    first.kill()
    first.wait()
    saved = max(int(p.name.split("-ba")[1].split("-")[0]) for p in folder.glob("ep0-ba*-rank0.pt"))
    relaunch = train([TINY, *overrides, f"max_duration={saved + 2}ba"])
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    assert (f"took over the save folder's lock {lock} from run 'mlm-tiny' (host {socket.gethostname()}, pid "
            f"{first.pid}") in relaunch.stderr and "its process is gone" in relaunch.stderr
    assert (folder / f"ep0-ba{saved + 2}-rank0.pt").exists() and not lock.exists()  # resumed, released

    pair = Run([TINY, *overrides, "max_duration=400ba"], processes=2, env={"OMP_NUM_THREADS": "1"})
    wait_for(lambda: any(int(p.name.split("-ba")[1].split("-")[0]) > saved + 2
                         for p in folder.glob("ep0-ba*-rank0.pt")), "a checkpoint of the two-process run", pair)
    assert json.loads(lock.read_text())["pid"] == pair.ranks[0].pid  # rank 0's, once
    os.killpg(pair.pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while pair.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pair.poll() is not None and not lock.exists()


@pytest.mark.slow
def test_runs_on_one_bucket_folder_the_second_refused_and_the_lease_released(tiny_shards, tmp_path, s3):
    """The same on moto's S3 server: a run saving to a bucket holds its lease object; the same command launched again
    exits 2 naming it; the lease is gone once the first run ends."""
    bucket = s3.bucket()
    folder = f"s3://{bucket}/runs/mlm-tiny"
    overrides = tiny_overrides(tiny_shards, tmp_path, **{
        "save_folder": "s3://" + bucket + "/runs/{run_name}", "save_interval": "2ba", "max_duration": "60ba",
        "eval_interval": "1000ba", "data.num_workers": 0, "global_train_batch_size": 8,
        "device_train_microbatch_size": 8})
    first = Run([TINY, *overrides], env={"OMP_NUM_THREADS": "1", **s3.env}, cwd=tmp_path)
    wait_for(lambda: f"runs/mlm-tiny/{LOCK_NAME}" in s3.objects(bucket), "its lease object", first)
    holder = json.loads(s3.client().get_object(Bucket=bucket, Key=f"runs/mlm-tiny/{LOCK_NAME}")["Body"].read())
    assert (holder["pid"], holder["run_name"]) == (first.pid, "mlm-tiny")
    second = train([TINY, *overrides], env=s3.env, cwd=tmp_path)
    assert second.returncode == 2
    lease = f"{folder}/{LOCK_NAME}"
    assert second.stderr.strip().splitlines()[-1] == "train.py: error: " + refusal(folder, holder, lease)
    assert first.wait() == 0, first.result().stderr[-3000:]
    assert f"runs/mlm-tiny/{LOCK_NAME}" not in s3.objects(bucket)
