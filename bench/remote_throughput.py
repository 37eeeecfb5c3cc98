"""Does training from a bucket keep up with local shards? Samples/s of one loader worker, the whole pipeline
(streaming, our whole-word masking collator), over the same shards three ways:

- ``local``: the shards on local disk (``data.streams.NAME.local``), decompressed by the pre-training check;
- ``cold``: the first epoch from moto's S3 server on 127.0.0.1 with an empty cache (``.remote`` + an empty
  ``.local``): every shard downloaded, checked against its xxh64 and decompressed while the epoch runs;
- ``warm``: a second run on that filled cache.

Each is one epoch in a fresh loader (its worker's start included, the same in all three), measured ``--rounds`` times
in rotating order (a cold epoch on a new empty cache each time, its warm epoch after it); the medians are reported.
Where the time of a cold epoch goes is measured apart, for the same shards, one step at a time: ``download_s``
(boto3, sequential), ``hash_s`` (xxh64 of the compressed shards), ``decompress_s`` (zstd). The text is ``corpus.py``'s,
converted at seq 512 (all of it as one stream) into shards of ``--shard-size-limit`` bytes. moto runs in a process of
its own.

Prints a last-line JSON object: ``cold_vs_local``, ``warm_vs_local`` (goals >= 0.8 and >= 0.95),
``cold_samples_per_s``, ``warm_samples_per_s``, ``local_samples_per_s`` (goal >= 1,000 per worker either way), the
three runs' ``*_first_batch_s``, ``samples``, ``shards``, ``shard_mb``, ``download_s``, ``hash_s``, ``decompress_s``,
``corpus``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from corpus import bench_corpus

from perceiver_stream.config import build
from perceiver_stream.convert.output import upload_output
from perceiver_stream.convert.sources import Source
from perceiver_stream.convert.writer import Options, convert
from perceiver_stream.data import DataConfig, build_dataloader, prepare

SEQ, BATCH = 512, 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3() -> tuple[subprocess.Popen, dict[str, str]]:
    """moto's S3 server in its own process, and the settings that reach it (as a user's shell would set them)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"S3_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, env
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("bench/remote_throughput.py: moto's S3 server did not start (it comes with "
                     "pip install 'perceiver-stream[bench]')")


def s3_client():
    import boto3

    return boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"])


def epoch(stream: dict[str, str], tokenizer: str) -> tuple[int, float, float]:
    """(samples, seconds, seconds to the first batch) of one epoch of one loader worker over ``stream``."""
    cfg = build(DataConfig, {"streams": {"text": stream}, "tokenizer": tokenizer, "max_seq_len": SEQ,
                             "num_workers": 1, "persistent_workers": False, "shuffle": True}, "data.")
    info = prepare(cfg, ("train",))
    loader = build_dataloader(cfg, info, "train", batch_size=BATCH, seed=0)
    samples, first = 0, None
    start = time.perf_counter()
    for batch in loader:
        first = first or time.perf_counter() - start
        samples += len(batch["input_ids"])
    return samples, time.perf_counter() - start, first


def where_the_time_goes(bucket: str, prefix: str, local: Path) -> dict[str, float]:
    """Download, hash and decompression of every shard, each step timed alone."""
    import xxhash
    from streaming.base.compression import decompress

    client = s3_client()
    index = json.loads((local / "index.json").read_text())
    times = {"download_s": 0.0, "hash_s": 0.0, "decompress_s": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for shard in index["shards"]:
            name = shard["zip_data"]["basename"]  # part-0000/shard.00000.mds.zstd
            path = Path(tmp, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            client.download_file(bucket, f"{prefix}/{name}", str(path))
            times["download_s"] += time.perf_counter() - start
            data = path.read_bytes()
            start = time.perf_counter()
            xxhash.xxh64(data).hexdigest()
            times["hash_s"] += time.perf_counter() - start
            start = time.perf_counter()
            decompress(shard["compression"], data)
            times["decompress_s"] += time.perf_counter() - start
    return {key: round(value, 2) for key, value in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shard-size-limit", type=int, default=1 << 23, help="bytes per shard (uncompressed)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    corpus = bench_corpus()
    server, env = start_s3()
    os.environ.update(env)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            convert({"text": Source("files", files=corpus.files)}, work / "shards",
                    Options(tokenizer=corpus.tokenizer, max_seq_len=SEQ, val_fraction=0.01, workers=2,
                            shard_size_limit=args.shard_size_limit))
            s3_client().create_bucket(Bucket="bench")
            upload_output(work / "shards", "s3://bench/shards", [])
            runs: dict[str, list[tuple[int, float, float]]] = {"local": [], "cold": [], "warm": []}
            for round_ in range(args.rounds):
                remote = {"local": str(work / f"cache-{round_}"), "remote": "s3://bench/shards/text"}
                measurements = [("local", {"local": str(work / "shards" / "text")}), ("cold", remote),
                                ("warm", remote)]
                if round_ % 2:  # the local epoch after the remote ones
                    measurements = measurements[1:] + measurements[:1]
                for name, stream in measurements:
                    runs[name].append(epoch(stream, corpus.tokenizer))
            train = work / "shards" / "text" / "train"
            shards = json.loads((train / "index.json").read_text())["shards"]
            attribution = where_the_time_goes("bench", "shards/text/train", train)
    finally:
        server.kill()
    rates = {name: statistics.median(samples / seconds for samples, seconds, _ in done) for name, done in runs.items()}
    first = {name: statistics.median(first for _, _, first in done) for name, done in runs.items()}
    print(json.dumps({
        "corpus": corpus.name,
        "cold_vs_local": round(rates["cold"] / rates["local"], 3),
        "warm_vs_local": round(rates["warm"] / rates["local"], 3),
        **{f"{name}_samples_per_s": round(rate) for name, rate in rates.items()},
        **{f"{name}_first_batch_s": round(seconds, 2) for name, seconds in first.items()},
        "samples": runs["local"][0][0], "shards": len(shards),
        "shard_mb": round(sum(s["zip_data"]["bytes"] for s in shards) / len(shards) / 2**20, 2),
        **attribution,
    }))


if __name__ == "__main__":
    main()
