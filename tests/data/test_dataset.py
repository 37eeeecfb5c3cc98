"""Streams from config: manifest checks, missing and corrupted shards, mixing proportions, val loader."""

from __future__ import annotations

import json
import shutil

import pytest
from streaming.base.compression import decompress

from perceiver_stream.config import build
from perceiver_stream.data import DataConfig, DataError, build_dataloader, prepare
from tests.conftest import shared_path


def config(**streams_and_overrides) -> DataConfig:
    overrides = {k: v for k, v in streams_and_overrides.items() if k != "streams"}
    settings = {"streams": streams_and_overrides["streams"], "max_seq_len": overrides.pop("max_seq_len", 128),
                "tokenizer": overrides.pop("tokenizer", str(shared_path("tokenizers/xlnet-base-cased"))),
                "num_workers": 0, **overrides}
    return build(DataConfig, settings, "data.")


def test_shards_of_another_tokenizer_are_refused(bert_shards):
    cfg = config(streams={"wikipedia": {"local": str(bert_shards)}})
    with pytest.raises(DataError, match=r"stream 'wikipedia' \(train\): shards have tokenizer fingerprint [0-9a-f]+ "
                                        r"\(tokenizer '.*bert-base-uncased'\) but the configuration has [0-9a-f]+"):
        prepare(cfg)


def test_other_max_seq_len_is_refused(xlnet_shards):
    with pytest.raises(DataError, match="shards have max_seq_len 128 .* configuration has 512"):
        prepare(config(streams={"wikipedia": {"local": str(xlnet_shards)}}, max_seq_len=512))


def test_missing_manifest_names_the_path(tmp_path):
    with pytest.raises(DataError, match=f"stream 'books' \\(train\\): no {tmp_path}/train/manifest.json"):
        prepare(config(streams={"books": {"local": str(tmp_path)}}))


def test_missing_and_corrupted_shards_are_named(xlnet_shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(xlnet_shards, copy)
    shard = sorted((copy / "train").glob("part-0001/shard.*.mds.zstd"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    cfg = config(streams={"wikipedia": {"local": str(copy)}})
    with pytest.raises(DataError, match=f"shard {shard} is corrupted"):
        prepare(cfg)
    shard.unlink()
    with pytest.raises(DataError, match=f"missing shard {shard}"):
        prepare(cfg)


def test_decompressed_shards_are_written_before_training_and_a_corrupted_one_replaced(xlnet_shards, tmp_path,
                                                                                      caplog):
    # Streaming reads the .mds decompressed beside the verified .mds.zstd, not the .mds.zstd itself.
    copy = tmp_path / "copy"
    shutil.copytree(xlnet_shards, copy)
    zipped = sorted((copy / "train").glob("part-*/shard.*.mds.zstd"))
    raws = [path.with_suffix("") for path in zipped]
    good = [decompress("zstd", path.read_bytes()) for path in zipped]
    raws[0].write_bytes(good[0][:1000] + bytes(len(good[0]) - 1000))
    raws[1].unlink(missing_ok=True)
    cfg = config(streams={"wikipedia": {"local": str(copy)}})
    info = prepare(cfg)
    assert f"decompressed shard {raws[0]} is corrupted" in caplog.text
    assert [raw.read_bytes() for raw in raws] == good
    assert not list(copy.rglob("*.tmp"))
    batch = next(iter(build_dataloader(cfg, info, "train", batch_size=4, seed=0)))
    assert (batch["input_ids"] != 0).any()


@pytest.mark.parametrize("name", ["index.json", "manifest.json"])
def test_truncated_index_or_manifest_is_named(xlnet_shards, tmp_path, name):
    copy = tmp_path / "copy"
    shutil.copytree(xlnet_shards, copy)
    path = copy / "train" / name
    path.write_text(path.read_text()[:100])
    with pytest.raises(DataError, match=f"{path} is not valid JSON .* reconvert the corpus"):
        prepare(config(streams={"wikipedia": {"local": str(copy)}}))


def test_remote_stream_fetches_manifest_and_shards(xlnet_shards, tmp_path):
    cfg = config(streams={"wikipedia": {"local": str(tmp_path / "cache"), "remote": str(xlnet_shards)}})
    info = prepare(cfg)
    assert (tmp_path / "cache" / "train" / "manifest.json").exists()
    batch = next(iter(build_dataloader(cfg, info, "train", batch_size=4, seed=0)))
    assert batch["input_ids"].shape == (4, 128)


def test_streams_mix_by_proportion(xlnet_shards, tmp_path):
    # two streams over the same shards, told apart by sample index ranges
    second = tmp_path / "second"
    shutil.copytree(xlnet_shards, second)
    cfg = config(streams={"a": {"local": str(xlnet_shards), "proportion": 0.75},
                          "b": {"local": str(second), "proportion": 0.25}}, epoch_size=2000)
    info = prepare(cfg)
    size = info.manifests[("a", "train")]["counts"]["samples"]
    indices = [i for batch in build_dataloader(cfg, info, "train", batch_size=50, seed=0)
               for i in batch["sample_idx"].tolist()]
    assert len(indices) == 2000
    from_a = sum(i < size for i in indices)
    assert from_a == 1500


def test_val_loader_reads_every_val_sample_in_order(xlnet_shards):
    cfg = config(streams={"wikipedia": {"local": str(xlnet_shards)}})
    info = prepare(cfg)
    indices = [i for batch in build_dataloader(cfg, info, "val", batch_size=16, seed=0)
               for i in batch["sample_idx"].tolist()]
    manifest = json.loads((xlnet_shards / "val" / "manifest.json").read_text())
    assert indices == list(range(manifest["counts"]["samples"]))


def test_stream_proportions_all_or_none():
    with pytest.raises(ValueError, match="give every stream a proportion, or none"):
        build(DataConfig, {"streams": {"a": {"local": "x", "proportion": 0.5}, "b": {"local": "y"}}}, "data.")


def test_two_streams_in_one_directory_are_named(xlnet_shards):
    cfg = config(streams={"wikipedia": {"local": str(xlnet_shards)}, "bookcorpus": {"local": f"{xlnet_shards}/"}})
    with pytest.raises(DataError, match=f"data.streams.wikipedia.local and data.streams.bookcorpus.local are the same "
                                        f"directory \\({xlnet_shards}/\\); give every stream its own"):
        prepare(cfg)


def test_proportions_that_do_not_sum_to_one_are_named_with_their_shares(xlnet_shards, tmp_path, caplog):
    copy = tmp_path / "copy"
    shutil.copytree(xlnet_shards, copy)
    cfg = config(streams={"wikipedia": {"local": str(xlnet_shards), "proportion": 0.7},
                          "books": {"local": str(copy), "proportion": 0.7}})
    with caplog.at_level("WARNING"):
        prepare(cfg, ("train",))
    assert "data.streams.*.proportion sum to 1.4, not 1; each training epoch draws wikipedia 0.5, books 0.5" in \
        caplog.text
