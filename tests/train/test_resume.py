"""Deterministic resumption: a killed run continues with exactly the same samples and masks, and the same
losses to float32 rounding (CPU, fp32, mlm_tiny).

Not bitwise: CPU matmuls here differ in the last bits between processes with different allocation
histories (with and without MKL_CBWR), and Lamb's normalised updates amplify that noise where gradients are
near zero (attention key projections drift visibly in weight space while every loss agrees to 1e-5), so
final weights are not compared.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.train.conftest import TINY, TRAIN, tiny_overrides
from tests.train.test_train import composer, run

BATCHES = 60


def overrides(shards: Path, run_dir: Path, **extra) -> list[str]:
    settings = {"run_name": "resume", "save_folder": run_dir / "ckpt", "save_interval": "10ba",
                "autoresume": "true", "max_duration": f"{BATCHES}ba", "eval_interval": "1000ba",
                "eval_subset_num_batches": 1, "callbacks.sample_log": run_dir / "samples.jsonl",
                "loggers.tensorboard": "null", "data.num_workers": 1, "data.num_canonical_nodes": 2,
                "global_train_batch_size": 16, "device_train_microbatch_size": 16}
    settings.update(extra)
    return tiny_overrides(shards, run_dir, **settings)


def batches(run_dir: Path) -> dict[int, dict]:
    """The sample log by batch; a batch re-run after a restart replaces its first record."""
    log = {}
    for line in (run_dir / "samples.jsonl").read_text().splitlines():
        record = json.loads(line)
        log[record["batch"]] = record
    return log


def kill_after(command: list[str], run_dir: Path, batch: int, env: dict | None = None) -> None:
    """Start ``command`` and SIGKILL its whole process group once the sample log reaches ``batch``."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, **(env or {})}, start_new_session=True)
    log = run_dir / "samples.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if log.exists() and max((json.loads(x)["batch"] for x in log.read_text().splitlines()), default=0) >= batch:
            break
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def kill_and_resume(command: list[str], run_dir: Path, env: dict | None = None) -> None:
    """Kill ``command`` at a random batch after 25, then rerun it to completion (autoresume)."""
    kill_after(command, run_dir, batch=26 + random.Random().randint(0, 8), env=env)
    assert (run_dir / "ckpt" / "latest-rank0.pt").exists()
    result = run(command, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


def resume_at_30(shards: Path, reference: Path, run_dir: Path) -> dict[int, dict]:
    """One process, no loader workers, from ``reference``'s batch-30 checkpoint to the end; its sample log."""
    load = reference / "ckpt" / "ep0-ba30-rank0.pt"
    result = run([sys.executable, TRAIN, TINY, *overrides(shards, run_dir, **{
        "autoresume": "false", "load_path": load, "data.num_workers": 0})])
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = batches(run_dir)
    assert sorted(resumed) == list(range(31, BATCHES + 1))
    return resumed


def assert_same_batches(run: dict[int, dict], reference: dict[int, dict]):
    assert sorted(run) == sorted(reference) == list(range(1, BATCHES + 1))
    for batch in range(1, BATCHES + 1):
        ours, theirs = run[batch], reference[batch]
        assert ours["samples"] == theirs["samples"], batch
        assert ours["digests"] == theirs["digests"], batch
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5), batch


@pytest.fixture(scope="module")
def reference(tiny_shards, tmp_path_factory) -> Path:
    """An uninterrupted single-process run with a checkpoint every 10 batches."""
    run_dir = tmp_path_factory.mktemp("reference")
    result = run([sys.executable, TRAIN, TINY, *overrides(tiny_shards, run_dir)])
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_killed_run_resumes_with_the_same_batches(tiny_shards, reference, tmp_path):
    kill_and_resume([sys.executable, TRAIN, TINY, *overrides(tiny_shards, tmp_path)], tmp_path)
    assert_same_batches(batches(tmp_path), batches(reference))


def test_resume_with_another_worker_count(tiny_shards, reference, tmp_path):
    resumed = resume_at_30(tiny_shards, reference, tmp_path)  # reference: data.num_workers=1
    expected = batches(reference)
    for batch in resumed:
        assert resumed[batch]["samples"] == expected[batch]["samples"], batch
        assert resumed[batch]["digests"] == expected[batch]["digests"], batch
        assert resumed[batch]["loss"] == pytest.approx(expected[batch]["loss"], rel=1e-5), batch


@pytest.mark.parametrize("crash", ["during_write", "between_unlink_and_symlink"])
def test_kill_while_checkpointing_resumes_from_a_complete_checkpoint(tiny_shards, reference, tmp_path, crash):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for batch in (10, 20, 30, 40):
        shutil.copy(reference / "ckpt" / f"ep0-ba{batch}-rank0.pt", folder)
    shutil.copy(reference / "samples.jsonl", tmp_path / "samples.jsonl")
    newest = folder / "ep0-ba40-rank0.pt"
    if crash == "during_write":  # half of ba40 on disk, latest still at ba30
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
        os.symlink("ep0-ba30-rank0.pt", folder / "latest-rank0.pt")
    result = run([sys.executable, TRAIN, TINY, *overrides(tiny_shards, tmp_path)])
    assert result.returncode == 0, result.stderr[-3000:]
    resumed_from = 30 if crash == "during_write" else 40
    assert ("ep0-ba40-rank0.pt.incomplete" in os.listdir(folder)) == (crash == "during_write")
    lines = [json.loads(x)["batch"] for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert lines[BATCHES] == resumed_from + 1  # the first batch run after the restart
    assert_same_batches(batches(tmp_path), batches(reference))


def test_changed_settings_are_refused_on_resume(tiny_shards, reference, tmp_path):
    shutil.copytree(reference / "ckpt", tmp_path / "ckpt", symlinks=True)
    result = run([sys.executable, TRAIN, TINY, *overrides(tiny_shards, tmp_path, **{
        "global_train_batch_size": 32, "device_train_microbatch_size": 32, "data.shuffle_seed": 1})])
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("train.py: error: cannot resume exactly")
    assert "global_train_batch_size=16 in the checkpoint but 32 now" in error
    assert "data.shuffle_seed=9176 in the checkpoint but 1 now" in error


@pytest.fixture(scope="module")
def ddp_reference(tiny_shards, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("ddp-reference")
    result = run(composer(2) + [TRAIN, TINY, *overrides(tiny_shards, run_dir, **{"data.num_workers": 0})],
                 env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_killed_ddp_run_resumes_with_the_same_batches(tiny_shards, ddp_reference, tmp_path):
    command = composer(2) + [TRAIN, TINY, *overrides(tiny_shards, tmp_path, **{"data.num_workers": 0})]
    kill_and_resume(command, tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert_same_batches(batches(tmp_path), batches(ddp_reference))


def test_two_process_checkpoint_resumes_on_one_process(tiny_shards, ddp_reference, tmp_path):
    resumed, expected = resume_at_30(tiny_shards, ddp_reference, tmp_path), batches(ddp_reference)
    for batch in resumed:
        ours = dict(zip(resumed[batch]["samples"], resumed[batch]["digests"], strict=True))
        theirs = dict(zip(expected[batch]["samples"], expected[batch]["digests"], strict=True))
        assert ours == theirs, batch  # the same samples with the same masks in every global batch
