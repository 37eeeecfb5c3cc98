"""Training from shards in object storage (moto's S3 server on 127.0.0.1) with a local cache smaller than the data."""

from __future__ import annotations

import json

import pytest

from convert.output import upload_output
from convert.sources import Source
from convert.writer import Options, convert
from tests.conftest import shared_path
from tests.train.conftest import TINY
from tests.train.forked import train
from tests.train.test_resume import ONE_THREAD, assert_same_batches, batches, overrides

pytestmark = pytest.mark.slow


def test_a_cache_smaller_than_the_data_evicts_and_trains_what_local_shards_train(s3, tmp_path):
    """Shards read from the bucket into an empty local cache that holds four of their twenty: the same samples,
    masks and losses as from the local shards, bitwise. Streaming checks each download against index.json's xxh64."""
    shards = tmp_path / "shards"
    convert({".": Source("files", files=(str(shared_path("corpora/wikipedia/enwiki2015_wiki_00")),))}, shards,
            Options(tokenizer=str(shared_path("tokenizers/xlnet-base-cased")), max_seq_len=128, val_fraction=0.05,
                    shard_size_limit=1 << 15))
    index = json.loads((shards / "train" / "index.json").read_text())["shards"]
    largest = max(shard["raw_data"]["bytes"] + shard["zip_data"]["bytes"] for shard in index)
    cache_limit = 4 * largest + 1  # the least streaming accepts: four of the shards
    assert len(index) >= 20 and cache_limit < sum(shard["raw_data"]["bytes"] for shard in index) / 2
    bucket = s3.bucket()
    upload_output(shards, f"s3://{bucket}/wiki", [])
    common = {"data.streams.bookcorpus": "null", "data.tokenizer": shared_path("tokenizers/xlnet-base-cased")}

    local = tmp_path / "local"
    result = train([TINY, *overrides(shards.parent, local, **common, **{"data.streams.wikipedia.local": shards})],
                   env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = tmp_path / "remote"
    cache = tmp_path / "cache"
    result = train([TINY, *overrides(shards.parent, remote, **common, **{
        "data.streams.wikipedia.local": cache, "data.streams.wikipedia.remote": f"s3://{bucket}/wiki",
        "data.cache_limit": cache_limit})], env={**ONE_THREAD, **s3.env})
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_batches(remote, local)
    cached = [p for p in (cache / "train").rglob("shard.*") if p.is_file()]
    assert 0 < sum(p.stat().st_size for p in cached) <= cache_limit and len(cached) < len(index)


def test_checkpoints_in_a_bucket_resume_on_another_machine_past_a_corrupted_newest_and_export(
        s3, tiny_shards, tmp_path, capsys):
    """A run saves to s3://; another working directory (another machine: no local copy) resumes from the bucket.
    The newest checkpoint there was corrupted after its digest was uploaded: it is renamed ``*.corrupt`` with a
    warning naming it and the previous one resumed, with the same batches as the first run had from there."""
    from perceiver_stream.export import main as export_main

    bucket = s3.bucket()
    remote = {"save_folder": f"s3://{bucket}/runs/{{run_name}}"}
    first, second = tmp_path / "first", tmp_path / "second"
    for machine in (first, second):
        machine.mkdir()
    result = train([TINY, *overrides(tiny_shards, first, **remote)], env={**ONE_THREAD, **s3.env}, cwd=first)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoints = ["ep0-ba10-rank0.pt", "ep1-ba20-rank0.pt", "ep2-ba30-rank0.pt"]
    stored = s3.objects(bucket, "runs/resume/")
    assert [f"runs/resume/{name}{suffix}" for name in checkpoints for suffix in ("", ".xxh64")] == \
        [key for key in stored if not key.endswith(".symlink")]
    newest = f"runs/resume/{checkpoints[-1]}"
    data = bytearray(s3.client().get_object(Bucket=bucket, Key=newest)["Body"].read())
    data[len(data) // 2] ^= 0xFF
    s3.client().put_object(Bucket=bucket, Key=newest, Body=bytes(data))

    result = train([TINY, *overrides(tiny_shards, second, **remote, max_duration="40ba")],
                   env={**ONE_THREAD, **s3.env}, cwd=second)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (f"checkpoint s3://{bucket}/runs/resume/{checkpoints[-1]} does not match the digest recorded when it was "
            f"written; renamed s3://{bucket}/runs/resume/{checkpoints[-1]}.corrupt") in result.stderr
    ours, theirs = batches(second), batches(first)
    assert sorted(ours) == list(range(21, 41))
    for batch in range(21, 31):
        assert ours[batch] == theirs[batch], batch

    export_main([f"s3://{bucket}/runs/resume/ep3-ba40-rank0.pt", "--out", str(tmp_path / "hf")])
    assert (tmp_path / "hf" / "config.json").exists()
    with pytest.raises(SystemExit):
        export_main([f"s3://{bucket}/{newest}.corrupt", "--out", str(tmp_path / "bad")])
    assert capsys.readouterr().err.strip().endswith(
        "its bytes do not match the digest recorded when it was written (or, without one, its CRC-32s); export an "
        "earlier checkpoint")
