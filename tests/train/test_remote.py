"""Shards and checkpoints in object storage (moto's S3 server on 127.0.0.1): a local cache smaller than the data, the
store failing mid-epoch; two nodes, one of them lost, and the run resumed from the bucket on other machines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from perceiver_stream.convert.output import upload_output
from perceiver_stream.convert.sources import Source
from perceiver_stream.convert.writer import Options, convert
from perceiver_stream.digest import file_xxh64
from tests.conftest import requires, shared_path
from tests.train.conftest import TINY, TRAIN
from tests.train.forked import Run, train
from tests.train.test_resume import ONE_THREAD, assert_same_batches, batches, overrides

pytestmark = pytest.mark.slow
SMALL = pytest.mark.xdist_group("s3-small-shards")  # tests sharing the module's small_shards go to one worker
NODE_BATCHES = 16  # checkpoints every 4: node 1 is lost after 8, the relaunch resumes from 4 or 8
DIST_TIMEOUT = 60  # seconds: how long a rank waits for a peer in a collective


@pytest.fixture(scope="module")
def small_shards(s3_server, tmp_path_factory) -> dict:
    """One Wikipedia extract in twenty shards, uploaded to a bucket, and the run that trains on them locally."""
    root = tmp_path_factory.mktemp("small")
    shards = root / "shards"
    convert({".": Source("files", files=(str(shared_path("corpora/wikipedia/enwiki2015_wiki_00")),))}, shards,
            Options(tokenizer=str(shared_path("tokenizers/xlnet-base-cased")), max_seq_len=128, val_fraction=0.05,
                    shard_size_limit=1 << 15))
    bucket = s3_server.bucket()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in s3_server.env.items():
            patch.setenv(key, value)
        upload_output(shards, f"s3://{bucket}/wiki", [])
    local = root / "local"
    result = train([TINY, *overrides(shards.parent, local, **COMMON, **{"data.streams.wikipedia.local": shards})],
                   env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    index = json.loads((shards / "train" / "index.json").read_text())["shards"]
    return {"shards": shards, "remote": f"s3://{bucket}/wiki", "local_run": local, "index": index}


COMMON = {"data.streams.bookcorpus": "null", "data.tokenizer": shared_path("tokenizers/xlnet-base-cased")}


def smallest_cache(index: list[dict]) -> int:
    """The least cache_limit streaming accepts: four of the largest shards."""
    return 4 * max(shard["raw_data"]["bytes"] + shard["zip_data"]["bytes"] for shard in index) + 1


def from_bucket(small_shards: dict, cache: Path, **extra) -> dict:
    return {**COMMON, "data.streams.wikipedia.local": cache, "data.streams.wikipedia.remote": small_shards["remote"],
            **extra}


@SMALL
def test_a_small_cache_and_the_store_failing_mid_epoch_and_a_rerun_train_what_local_shards_train(
        small_shards, s3, tmp_path):
    """Shards read from the bucket into an empty local cache that holds four of their twenty (streaming evicts, and
    checks each download against index.json's xxh64). The S3 server stops after batch 12 (a checkpoint at 10):
    streaming's bounded retries, then one line naming the shard and the endpoint, exit status 1, nothing in the
    cache that a later run would trust. The server back, the same command resumes from the checkpoint. Every batch
    of the two runs holds the same samples, masks and losses as the run on the local shards, bitwise."""
    index = small_shards["index"]
    assert len(index) >= 20 and smallest_cache(index) < sum(shard["raw_data"]["bytes"] for shard in index) / 2
    cache = tmp_path / "cache"
    argv = [TINY, *overrides(small_shards["shards"].parent, tmp_path, **from_bucket(
        small_shards, cache, **{"data.cache_limit": smallest_cache(small_shards["index"]), "data.download_retry": 1,
                                "data.download_timeout": 10}))]
    run = Run([str(a) for a in argv], 1, {**ONE_THREAD, **s3.env, "AWS_MAX_ATTEMPTS": "2"})
    log = tmp_path / "samples.jsonl"
    try:
        deadline = time.monotonic() + 300
        while not (log.exists() and len(log.read_text().splitlines()) >= 12):
            assert run.poll() is None and time.monotonic() < deadline, "the run ended before the server stopped"
            time.sleep(0.05)
        s3.server.stop()
        stopped = time.monotonic()
        result = run.result()
    finally:
        s3.server.start()
    assert result.returncode == 1 and time.monotonic() - stopped < 120, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"train.py: error: cannot download shard {small_shards['remote']}/train/part-0000/shard.")
    assert f"({s3.env['S3_ENDPOINT_URL']}) in 2 attempts: EndpointConnectionError" in error, error
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    hashes = {shard["zip_data"]["basename"]: shard["zip_data"]["hashes"]["xxh64"] for shard in small_shards["index"]}
    for path in (cache / "train").rglob("*"):
        name = path.relative_to(cache / "train").as_posix()
        if path.is_file() and name.endswith(".zstd"):
            assert file_xxh64(path) == hashes[name], name
        elif path.is_file():
            assert name.endswith((".mds", "index.json", "manifest.json")), name

    result = train(argv, env={**ONE_THREAD, **s3.env})
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_batches(tmp_path, small_shards["local_run"])
    cached = [p for p in (cache / "train").rglob("shard.*") if p.is_file()]
    assert 0 < sum(p.stat().st_size for p in cached) <= smallest_cache(index) and len(cached) < len(index)


def unshare_available() -> bool:
    command = ["unshare", "--ipc", "--mount", "--fork", "sh", "-c", NODE_SHM]
    return shutil.which("unshare") is not None and subprocess.run(command, capture_output=True).returncode == 0


NODE_SHM = "mount -t tmpfs tmpfs /dev/shm"  # a node's own /dev/shm, in its own IPC and mount namespaces


@dataclass
class Nodes:
    """The two launchers of a two-node run and what each node's machine holds."""
    launchers: list[subprocess.Popen]
    machines: list[Path]
    temporaries: list[Path]

    def wait(self, timeout: float) -> list[int]:
        codes = [launcher.wait(timeout=timeout) for launcher in self.launchers]
        for temporary in self.temporaries:
            shutil.rmtree(temporary, ignore_errors=True)
        return codes

    def stderr(self) -> list[str]:
        return [(machine / "stderr").read_text() for machine in self.machines]


def launch_nodes(small_shards: dict, env: dict[str, str], root: Path, bucket: str, **extra) -> Nodes:
    """Two nodes on this machine, each Composer's launcher with one process (--world_size 2 --node_rank R), each
    with what a machine of its own has: a /dev/shm (streaming's shared memory) in its own IPC and mount namespaces,
    a temporary directory (our shared-memory registration lock, streaming's file locks), a working directory and a
    shard cache. Shards and checkpoints in the S3 server."""
    from tests.optim.test_lamb import free_port

    port, nodes = free_port(), Nodes([], [], [])
    for rank in (0, 1):
        machine = root / f"node{rank}"
        machine.mkdir(parents=True)
        # short: multiprocessing's sockets live there, and a Unix socket's path is at most 107 bytes
        temporary = Path(tempfile.mkdtemp(prefix=f"node{rank}-"))
        settings = from_bucket(small_shards, machine / "cache", **{
            "save_folder": f"s3://{bucket}/runs/{{run_name}}", "save_interval": "4ba",
            "max_duration": f"{NODE_BATCHES}ba", "device_train_microbatch_size": 4, **extra})
        argv = [TINY, *overrides(small_shards["shards"].parent, machine, **settings)]
        launcher = [sys.executable, "-m", "composer.cli.launcher", "--world_size", "2", "--nproc", "1", "--node_rank",
                    str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port), TRAIN, *map(str, argv)]
        nodes.launchers.append(subprocess.Popen(
            ["unshare", "--ipc", "--mount", "--fork", "sh", "-c", NODE_SHM + ' && exec "$@"', "node", *launcher],
            cwd=machine, stdout=subprocess.DEVNULL, stderr=open(machine / "stderr", "w"),
            env={**os.environ, **ONE_THREAD, **env, "TMPDIR": str(temporary)}))
        nodes.machines.append(machine)
        nodes.temporaries.append(temporary)
    return nodes


def batch_of(key: str) -> int:
    """The batch of a checkpoint's name (ep1-ba20-rank0.pt: 20)."""
    return int(key.rsplit("/", 1)[-1].split("-ba")[1].split("-")[0])


def processes_of(nodes: Nodes, rank: int) -> list[str]:
    """Command lines of the processes still running that were started for node ``rank``: each inherits the node's
    TMPDIR (its launcher, ranks, loader workers, and what a rank spawns, whose command lines name no path)."""
    found = []
    for process in psutil.process_iter(["cmdline", "environ", "status"]):
        environment = process.info["environ"] or {}
        if (process.info["status"] != psutil.STATUS_ZOMBIE
                and environment.get("TMPDIR") == str(nodes.temporaries[rank])):
            found.append(" ".join(process.info["cmdline"] or []))
    return found


def training_process(launcher: subprocess.Popen) -> psutil.Process:
    """The rank that a node's launcher started (not the launcher, not the rank's loader workers)."""
    for process in psutil.Process(launcher.pid).children(recursive=True):
        if process.cmdline()[1:2] == [TRAIN] and process.parent().cmdline()[1:3] == ["-m", "composer.cli.launcher"]:
            return process
    raise AssertionError("no training process under the launcher")


@SMALL
def test_two_nodes_train_as_one_process_and_when_one_is_lost_resume_elsewhere_past_a_corrupted_checkpoint(
        small_shards, s3, tmp_path, capsys):
    """Two nodes, shards and checkpoints in the bucket. Node 1's training process is killed (SIGKILL) mid-run: node 0
    ends within a bounded time with one line naming what happened, and neither node leaves a process behind. The
    newest checkpoint in the bucket is then corrupted; both nodes relaunched on other machines (nothing local) resume
    from the previous one, with a warning naming the corrupted one. The batches the relaunch trains again equal the
    first run's bitwise; the two runs together hold the same samples and masks as one process, and losses within
    the DDP tolerance of tests/train/test_equivalence.py (one process sums micro-batches in another order). The last
    checkpoint exports from the bucket; the corrupted one is refused."""
    requires(unshare_available(), "needs unshare --ipc --mount (root) to give each node its own /dev/shm")
    from perceiver_stream.export import main as export_main
    from tests.train.test_equivalence import LOSS_RTOL

    bucket = s3.bucket()
    lost = launch_nodes(small_shards, s3.env, tmp_path / "first", bucket, dist_timeout=DIST_TIMEOUT)
    deadline = time.monotonic() + 300
    while "runs/resume/ep0-ba8-rank0.pt.xxh64" not in s3.objects(bucket):
        assert all(launcher.poll() is None for launcher in lost.launchers) and time.monotonic() < deadline, \
            [text[-2000:] for text in lost.stderr()]
        time.sleep(0.5)
    training_process(lost.launchers[1]).kill()
    killed = time.monotonic()
    codes = lost.wait(timeout=DIST_TIMEOUT + 120)
    print(f"node 0 ended {time.monotonic() - killed:.1f} s after node 1 was killed")
    node0 = lost.stderr()[0]
    assert codes[0] != 0 and time.monotonic() - killed < DIST_TIMEOUT + 60, node0[-3000:]
    assert "Traceback" not in node0, node0[-3000:]
    errors = [line for line in node0.splitlines() if line.startswith("train.py: error: ")]
    assert len(errors) == 1 and "lost" in errors[0], node0[-3000:]
    for rank in (0, 1):  # node 1's rank was SIGKILLed: what it spawned ended with it (perceiver_stream.train.lifetime)
        assert processes_of(lost, rank) == [], rank

    stored = s3.objects(bucket, "runs/resume/")
    checkpoints = sorted((key for key in stored if key.endswith(".pt")), key=batch_of)
    newest = checkpoints[-1]  # its digest may not have been uploaded when the run stopped
    reason = ("does not match the digest recorded when it was written" if f"{newest}.xxh64" in stored else
              "has no digest and its CRC-32 check fails")
    data = bytearray(s3.client().get_object(Bucket=bucket, Key=newest)["Body"].read())
    data[len(data) // 2] ^= 0xFF
    s3.client().put_object(Bucket=bucket, Key=newest, Body=bytes(data))
    relaunched = launch_nodes(small_shards, s3.env, tmp_path / "second", bucket, dist_timeout=DIST_TIMEOUT)
    assert relaunched.wait(timeout=600) == [0, 0], [text[-2000:] for text in relaunched.stderr()]
    assert f"checkpoint s3://{bucket}/{newest} {reason}; renamed s3://{bucket}/{newest}.corrupt" in \
        relaunched.stderr()[0]
    first, second = batches(lost.machines[0]), batches(relaunched.machines[0])
    previous = batch_of(checkpoints[-2]) if len(checkpoints) > 1 else 0
    assert sorted(second) == list(range(previous + 1, NODE_BATCHES + 1)) and previous < max(first)
    for batch in range(previous + 1, max(first) + 1):
        assert second[batch] == first[batch], batch
    ours, theirs = {**first, **second}, batches(small_shards["local_run"])
    for batch, record in ours.items():  # each rank's samples are logged together: the same ones, not in order
        assert (sorted(zip(record["samples"], record["digests"], strict=True))
                == sorted(zip(theirs[batch]["samples"], theirs[batch]["digests"], strict=True))), batch
    gaps = [abs(ours[b]["loss"] - theirs[b]["loss"]) / theirs[b]["loss"] for b in ours]
    print(f"two nodes: losses within {max(gaps):.2e} of one process's; batches {previous + 1}-{max(first)} trained "
          "again after the relaunch, bitwise")
    assert max(gaps) <= LOSS_RTOL["ddp"]

    last = next(key for key in s3.objects(bucket, "runs/resume/") if key.endswith(f"-ba{NODE_BATCHES}-rank0.pt"))
    export_main([f"s3://{bucket}/{last}", "--out", str(tmp_path / "hf")])
    assert_exported_from(s3.client().get_object(Bucket=bucket, Key=last)["Body"].read(), tmp_path)
    with pytest.raises(SystemExit):
        export_main([f"s3://{bucket}/{newest}.corrupt", "--out", str(tmp_path / "bad")])
    assert capsys.readouterr().err.strip().endswith(
        "its bytes do not match the digest recorded when it was written (or, without one, its CRC-32s); export an "
        "earlier checkpoint")


def assert_exported_from(checkpoint_bytes: bytes, tmp_path: Path) -> None:
    """The model exported to ``tmp_path / "hf"`` gives the logits of the checkpoint ``checkpoint_bytes`` holds."""
    import torch
    from transformers import PerceiverForMaskedLM

    from perceiver_stream.export import load_checkpoint_model, read_checkpoint, run_config

    local = tmp_path / "downloaded.pt"
    local.write_bytes(checkpoint_bytes)
    state = read_checkpoint(local)
    cfg, _ = run_config(state, local, None, [])
    ours = load_checkpoint_model(local, cfg.model, state)
    exported = PerceiverForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    length = cfg.data.max_seq_len
    input_ids = torch.randint(7, cfg.model.vocab_size, (2, length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(exported(inputs=input_ids).logits[:, :length],
                                   ours(input_ids, torch.ones_like(input_ids)), atol=1e-5, rtol=1e-5)
