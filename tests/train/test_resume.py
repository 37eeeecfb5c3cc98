"""Deterministic resumption: a killed run continues with exactly the same samples and masks, bitwise the same
losses and bitwise the same final weights (CPU, fp32, mlm_tiny).

Runs are forked from a process that has imported the trainer (tests/train/forked.py). Every run here uses one
intra-op thread. With two threads on a busy 2-core machine, some steps come out one
float32 ulp apart between otherwise identical runs (the reduction order of CPU kernels then varies), and
Lamb's normalised updates amplify such an ulp where gradients are near zero; docs/resumption.md
says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import run
from tests.train.conftest import TINY, TRAIN, tiny_overrides
from tests.train.forked import Run, train
from tests.train.test_train import composer

pytestmark = pytest.mark.slow
# Tests that share a module fixture's run go to one pytest-xdist worker, which runs it once.
REFERENCE, DDP_REFERENCE = pytest.mark.xdist_group("resume-reference"), pytest.mark.xdist_group("resume-ddp-ref")

BATCHES = 30
EPOCH = 12  # batches per epoch (data.epoch_size=96 samples): every resumed run here crosses epoch boundaries
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def overrides(shards: Path, run_dir: Path, **extra) -> list[str]:
    settings = {"run_name": "resume", "save_folder": run_dir / "ckpt", "save_interval": "10ba",
                "autoresume": "true", "max_duration": f"{BATCHES}ba", "eval_interval": "1000ba",
                "eval_subset_num_batches": 1, "callbacks.sample_log": run_dir / "samples.jsonl",
                "loggers.tensorboard": "null", "data.num_workers": 1, "data.num_canonical_nodes": 2,
                "global_train_batch_size": 8, "device_train_microbatch_size": 8, "data.epoch_size": 8 * EPOCH}
    settings.update(extra)
    return tiny_overrides(shards, run_dir, **settings)


def batches(run_dir: Path) -> dict[int, dict]:
    """The sample log by batch; a batch re-run after a restart replaces its first record."""
    log = {}
    for line in (run_dir / "samples.jsonl").read_text().splitlines():
        record = json.loads(line)
        log[record["batch"]] = record
    return log


def kill_after(argv: list[str], processes: int, run_dir: Path, batch: int) -> None:
    """Start train.py ``argv`` on ``processes`` ranks and SIGKILL its whole process group once the sample log
    reaches ``batch``."""
    started = Run([str(a) for a in argv], processes, ONE_THREAD)
    log = run_dir / "samples.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if log.exists() and max((json.loads(x)["batch"] for x in log.read_text().splitlines()), default=0) >= batch:
            break
        assert started.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    started.kill()
    started.result()


# The kill point's seed, printed with every kill: PERCEIVER_STREAM_KILL_SEED=N replays a failure.
KILL_SEED = int(os.environ.get("PERCEIVER_STREAM_KILL_SEED") or random.randrange(1 << 32))


def kill_and_resume(argv: list[str], run_dir: Path, processes: int = 1) -> None:
    """Kill the run at a batch from 12 to 25 (after the checkpoint at 10 or 20) drawn from ``KILL_SEED``, then rerun
    it to completion (autoresume)."""
    batch = 12 + random.Random(KILL_SEED).randint(0, 13)
    print(f"killing the run after batch {batch} (PERCEIVER_STREAM_KILL_SEED={KILL_SEED})")
    kill_after(argv, processes, run_dir, batch=batch)
    assert (run_dir / "ckpt" / "latest-rank0.pt").exists()
    result = train(argv, processes, ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]


def resume_from(shards: Path, checkpoint: Path, run_dir: Path, processes: int = 1, **extra) -> None:
    """No loader workers, from ``checkpoint`` to the end."""
    result = train([TINY, *overrides(shards, run_dir, **{
        "autoresume": "false", "load_path": checkpoint, "data.num_workers": 0, **extra})], processes, ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]


def checkpoint(run_dir: Path, batch: int, suffix: str = "-rank0.pt") -> Path:
    """The run's checkpoint after ``batch`` (Composer names it ``ep{epoch}-ba{batch}``)."""
    (path,) = (run_dir / "ckpt").glob(f"ep*-ba{batch}{suffix}")
    return path


def weights_digest(run_dir: Path) -> str:
    """sha256 over the model weights of the run's final checkpoint, in state-dict order."""
    final = checkpoint(run_dir, BATCHES)
    state = torch.load(final, map_location="cpu", weights_only=False)
    digest = hashlib.sha256()
    for name, tensor in state["state"]["model"].items():
        digest.update(name.encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def assert_same_batches(run_dir: Path, reference: Path, first_batch: int = 1):
    """The same samples, masks and losses (bitwise) in every batch from ``first_batch``."""
    ours, theirs = batches(run_dir), batches(reference)
    assert sorted(ours) == list(range(first_batch, BATCHES + 1))
    for batch in ours:
        assert ours[batch]["samples"] == theirs[batch]["samples"], batch
        assert ours[batch]["digests"] == theirs[batch]["digests"], batch
        assert ours[batch]["loss"] == theirs[batch]["loss"], batch


def assert_same_run(run_dir: Path, reference: Path, first_batch: int = 1):
    """The same batches (``assert_same_batches``) and the same final weights."""
    assert_same_batches(run_dir, reference, first_batch)
    assert weights_digest(run_dir) == weights_digest(reference)


@pytest.fixture(scope="module")
def reference(tiny_shards, tmp_path_factory) -> Path:
    """An uninterrupted single-process run with a checkpoint every 10 batches."""
    run_dir = tmp_path_factory.mktemp("reference")
    result = train([TINY, *overrides(tiny_shards, run_dir)], env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@REFERENCE
def test_killed_run_resumes_with_the_same_batches(tiny_shards, reference, tmp_path):
    kill_and_resume([TINY, *overrides(tiny_shards, tmp_path)], tmp_path)
    assert_same_run(tmp_path, reference)


@REFERENCE
def test_a_killed_run_with_compiled_layers_resumes_exactly(tiny_shards, reference, tmp_path):
    """``model.compile`` with checkpointing and resumption: the compiled run, killed and resumed, trains the eager
    reference's batches bitwise. Traced with ``aot_eager`` (inductor's C++ generation takes minutes here), which
    runs the same kernels as eager, so bitwise equality with the eager run is what it must give."""
    compiled = {"model.compile": "true", "model.compile_backend": "aot_eager"}
    kill_and_resume([TINY, *overrides(tiny_shards, tmp_path, **compiled)], tmp_path)
    assert_same_run(tmp_path, reference)


@REFERENCE
def test_a_resumed_run_may_turn_compile_on_or_off(tiny_shards, reference, tmp_path):
    """The eager reference's checkpoint at batch 10 resumed with ``model.compile`` on to batch 20, that checkpoint
    resumed eager to the end: the reference's batches and final weights, bitwise (``aot_eager`` runs eager's
    kernels)."""
    compiled = {"model.compile": "true", "model.compile_backend": "aot_eager"}
    resume_from(tiny_shards, checkpoint(reference, 10), tmp_path, **compiled, max_duration="20ba")
    resume_from(tiny_shards, checkpoint(tmp_path, 20), tmp_path)
    assert_same_run(tmp_path, reference, first_batch=11)


def test_a_resumed_run_takes_its_compiled_graphs_from_the_checkpoint(tiny_shards, tmp_path):
    """The checkpoint carries torch.compile's cache (``CompileCache``): resumed in a process whose inductor cache
    directory is empty, as on another machine, the run compiles nothing. Here the graphs are the fused Lamb's two
    passes (``optimizer.fused=true``, inductor)."""
    def argv(batches: int) -> list:
        # weight decay 0, as in the compiled passes' availability check: two graphs to compile rather than four (a
        # float argument is a constant of its graph), each some seconds of C++ compilation at every start
        return [TINY, *overrides(tiny_shards, tmp_path, **{"optimizer.fused": "true", "max_duration": f"{batches}ba",
                                                           "save_interval": "2ba", "optimizer.weight_decay": 0.0})]

    # the first run uses this machine's inductor cache, as a user's would: whether its graphs were compiled now or
    # by an earlier run, the checkpoint carries them
    first = train(argv(2), env=ONE_THREAD)
    assert first.returncode == 0, first.stderr[-3000:]
    counts = re.search(r"compilation: (\d+) graph\(s\) from a cache, (\d+) compiled", first.stderr)
    assert counts, first.stderr[-3000:]
    graphs = int(counts[1]) + int(counts[2])
    assert graphs >= 2
    resumed = train(argv(4), env={**ONE_THREAD, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache-resumed")})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"compile cache: {graphs} compiled graph(s) from the checkpoint" in resumed.stderr
    assert f"compilation: {graphs} graph(s) from a cache, 0 compiled" in resumed.stderr, resumed.stderr[-3000:]
    assert max(batches(tmp_path)) == 4


@REFERENCE
def test_a_resume_with_another_worker_count_across_epoch_boundaries(tiny_shards, reference, tmp_path):
    """From batch 10 of epoch 0 with no loader workers (the reference had one), through epochs 1 and 2: the same
    samples, masks and losses, and the same final weights."""
    assert [batches(reference)[b]["epoch"] for b in (EPOCH, EPOCH + 1, 2 * EPOCH, 2 * EPOCH + 1)] == [0, 1, 1, 2]
    resume_from(tiny_shards, checkpoint(reference, 10), tmp_path)
    assert_same_run(tmp_path, reference, first_batch=11)


@REFERENCE
@pytest.mark.parametrize("crash", ["during_write", "between_unlink_and_symlink", "bytes_corrupted_later",
                                   "corrupted_before_its_digest"])
def test_kill_while_checkpointing_resumes_from_a_complete_checkpoint(tiny_shards, reference, tmp_path, crash):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for batch in (10, 20):
        for suffix in ("-rank0.pt", "-rank0.pt.xxh64"):  # training records the digests
            shutil.copy(checkpoint(reference, batch, suffix), folder)
    shutil.copy(reference / "samples.jsonl", tmp_path / "samples.jsonl")
    older, newest = checkpoint(tmp_path, 10), checkpoint(tmp_path, 20)  # the copies
    if crash == "during_write":  # half of ba20 on disk, latest still at ba10
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
        os.symlink(older.name, folder / "latest-rank0.pt")
    if crash == "corrupted_before_its_digest":  # killed before the digest was recorded, bytes changed since
        newest.with_name(newest.name + ".xxh64").unlink()
    if crash in ("bytes_corrupted_later", "corrupted_before_its_digest"):
        # 4 kB of noise inside the weights: still a valid zip, loads as garbage
        data = bytearray(newest.read_bytes())
        middle = len(data) // 2
        data[middle:middle + 4096] = random.Random(0).randbytes(4096)
        newest.write_bytes(bytes(data))
        os.symlink(newest.name, folder / "latest-rank0.pt")
    result = train([TINY, *overrides(tiny_shards, tmp_path)], env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed_from = 20 if crash == "between_unlink_and_symlink" else 10
    corrupted = crash in ("bytes_corrupted_later", "corrupted_before_its_digest")
    assert (f"{newest.name}.incomplete" in os.listdir(folder)) == (crash == "during_write")
    assert (f"{newest.name}.corrupt" in os.listdir(folder)) == corrupted
    if crash == "bytes_corrupted_later":
        assert "does not match the digest recorded when it was written" in result.stderr
    if crash == "corrupted_before_its_digest":
        assert "has no digest (the run stopped before recording it) and its CRC-32 check fails" in result.stderr
    lines = [json.loads(x)["batch"] for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert lines[BATCHES] == resumed_from + 1  # the first batch run after the restart
    assert_same_run(tmp_path, reference)


@REFERENCE
def test_changed_settings_are_refused_on_resume(tiny_shards, reference, tmp_path):
    shutil.copytree(reference / "ckpt", tmp_path / "ckpt", symlinks=True)
    result = train([TINY, *overrides(tiny_shards, tmp_path, **{
        "global_train_batch_size": 32, "device_train_microbatch_size": 32, "data.shuffle_seed": 1})])
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("train.py: error: cannot resume exactly")
    assert "global_train_batch_size=8 in the checkpoint but 32 now" in error
    assert "data.shuffle_seed=9176 in the checkpoint but 1 now" in error


@REFERENCE
def test_another_model_shape_is_named_before_loading(tiny_shards, reference, tmp_path):
    """Not Composer's multi-line size mismatch from inside its loader: the recorded model settings, compared first."""
    shutil.copytree(reference / "ckpt", tmp_path / "ckpt", symlinks=True)
    result = train([TINY, *overrides(tiny_shards, tmp_path, **{"model.num_latent_channels": 192,
                                                                "model.activation_checkpointing": "true"})])
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error == (f"train.py: error: autoresume: checkpoint ep2-ba{BATCHES}-rank0.pt was trained with "
                     "model.num_latent_channels=128, this run has 192; start a new run_name (or save_folder) or "
                     "restore the settings")


@pytest.fixture(scope="module")
def ddp_reference(tiny_shards, tmp_path_factory) -> Path:
    """Launched by Composer's launcher (`composer -n 2`), as users run it; the runs compared with it are forked
    (tests/train/forked.py), so these tests also show the two launch the same training."""
    run_dir = tmp_path_factory.mktemp("ddp-reference")
    result = run(composer(2) + [TRAIN, TINY, *overrides(tiny_shards, run_dir, **{"data.num_workers": 0})],
                 env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@DDP_REFERENCE
def test_two_process_checkpoint_resumes_on_two_processes(tiny_shards, ddp_reference, tmp_path):
    """From batch 10, on two processes again (kill -9 of a two-process run: the FSDP2 tests below)."""
    resume_from(tiny_shards, checkpoint(ddp_reference, 10), tmp_path, processes=2)
    assert_same_run(tmp_path, ddp_reference, first_batch=11)


@DDP_REFERENCE
def test_two_process_checkpoint_resumes_on_one_process(tiny_shards, ddp_reference, tmp_path):
    resume_from(tiny_shards, checkpoint(ddp_reference, 20), tmp_path)
    resumed, expected = batches(tmp_path), batches(ddp_reference)
    assert sorted(resumed) == list(range(21, BATCHES + 1))
    for batch in resumed:
        ours = dict(zip(resumed[batch]["samples"], resumed[batch]["digests"], strict=True))
        theirs = dict(zip(expected[batch]["samples"], expected[batch]["digests"], strict=True))
        assert ours == theirs, batch  # the same samples with the same masks in every global batch
    # One process sums the global batch's gradient in another order than two ranks' all-reduce: the same run up to
    # float32 rounding, not bit for bit (docs/resumption.md).
    losses = [(resumed[b]["loss"], expected[b]["loss"]) for b in sorted(resumed)]
    loss_gap = max(abs(a - b) / abs(b) for a, b in losses)
    start, ours, theirs = (torch.load(checkpoint(d, batch), map_location="cpu", weights_only=False)["state"]["model"]
                           for d, batch in ((ddp_reference, 20), (tmp_path, BATCHES), (ddp_reference, BATCHES)))

    def norm(tensors) -> float:
        return float(sum((t.double() ** 2).sum() for t in tensors).sqrt())

    weight_gap = norm(ours[k] - theirs[k] for k in theirs) / norm(theirs[k] - start[k] for k in theirs)
    print(f"two ranks resumed on one: losses within {loss_gap:.2e} relative, weights {weight_gap:.2e} of the distance "
          "the last 10 batches moved them")
    assert loss_gap < 1e-6 and weight_gap < 1e-4


@REFERENCE
def test_a_training_checkpoint_describes_its_run(reference, tmp_path):
    """What training writes is enough for perceiver-export: no yaml, no overrides (the exported logits are
    compared in tests/model/test_export.py)."""
    from perceiver_stream.export import load_checkpoint_model, read_checkpoint, run_config

    checkpoint = reference / "ckpt" / "latest-rank0.pt"
    state = read_checkpoint(checkpoint)
    cfg, tokenizer_fingerprint = run_config(state, checkpoint, None, [])
    assert cfg.global_train_batch_size == 8 and cfg.model.num_latents == 64  # this run's overrides and yaml
    assert len(tokenizer_fingerprint) == 64
    model = load_checkpoint_model(checkpoint, cfg.model, state)
    assert model.config == cfg.model
    result = run([sys.executable, "-m", "perceiver_stream.export", str(checkpoint), "--out", str(tmp_path / "hf")])
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_latents"] == 64


FSDP2 = {"data.num_workers": 0, "parallelism.fsdp.version": 2}


@pytest.fixture(scope="module")
def fsdp2_reference(tiny_shards, tmp_path_factory) -> Path:
    """An uninterrupted two-process FSDP2 run writing sharded checkpoints (the state dict type changes how a run
    is saved, not what it trains)."""
    run_dir = tmp_path_factory.mktemp("fsdp2-reference")
    result = train([TINY, *overrides(tiny_shards, run_dir, **FSDP2, **{
        "parallelism.fsdp.state_dict_type": "sharded"})], processes=2, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.xdist_group("resume-fsdp2-reference")
@pytest.mark.parametrize("state_dict_type", ["sharded", "full"])
def test_killed_fsdp2_run_resumes_exactly(tiny_shards, fsdp2_reference, tmp_path, state_dict_type):
    """kill -9 of a two-process FSDP2 run that writes sharded (torch.distributed.checkpoint) or full (rank 0)
    checkpoints, resumed to the same samples, losses and final weights as the uninterrupted run; the final
    checkpoint reads back (perceiver-export's path) to the same weights."""
    from perceiver_stream.export import load_checkpoint_model, read_checkpoint, run_config

    kill_and_resume([TINY, *overrides(tiny_shards, tmp_path, **FSDP2, **{
        "parallelism.fsdp.state_dict_type": state_dict_type})], tmp_path, processes=2)
    assert_same_batches(tmp_path, fsdp2_reference)
    checkpoints = [checkpoint(fsdp2_reference, BATCHES, suffix=""),
                   checkpoint(tmp_path, BATCHES, suffix="" if state_dict_type == "sharded" else "-rank0.pt")]
    states = [read_checkpoint(checkpoint) for checkpoint in checkpoints]
    final = [state["model"] for state in states]
    assert final[0].keys() == final[1].keys() and len(final[0]) > 0
    assert all(torch.equal(final[0][name], final[1][name]) for name in final[0])
    cfg, _ = run_config(states[1], checkpoints[1], None, [])  # what perceiver-export needs, from it alone
    assert cfg.parallelism.fsdp.state_dict_type == state_dict_type
    load_checkpoint_model(checkpoints[1], cfg.model, states[1])

