"""`composer train.py yamls/mlm_tiny.yaml`: DDP and FSDP2 on CPU, configuration errors, W&B offline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, shared_path
from tests.train.conftest import TINY, tiny_overrides
from tests.train.forked import train


def composer(n: int) -> list[str]:
    return [sys.executable, "-m", "composer.cli.launcher", "-n", str(n)]  # random free master port


def test_fsdp2_shards_parameters_and_checkpoints_and_compiles_every_attention_layer(tiny_shards, tmp_path):
    overrides = tiny_overrides(tiny_shards, tmp_path, **{"parallelism.fsdp.version": 2,
                                                          "model.activation_checkpointing": "true",
                                                          "model.compile": "true", "max_duration": "2ba",
                                                          "model.compile_backend": "aot_eager",
                                                          "eval_interval": "100ba", "data.num_workers": 0})
    out = tmp_path / "report.json"
    result = train([out, TINY, *overrides], 2, env={"OMP_NUM_THREADS": "1"}, entry="tests.train.fsdp_worker:main")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["layers"] == 4  # encoder cross-attention, 2 latent layers, decoder cross-attention
    assert report["checkpointed_layers"] == report["checkpoint_wrappers"] == 4
    assert report["compiled_layers"] == 4 and report["traced_graphs"] >= 3  # the three kinds of layer, traced
    assert report["batches"] == 2 and report["loss_is_finite"]
    assert report["dtensor_parameters"] == report["parameters"] > 0
    assert report["optimizer"] == "Lamb"


@pytest.mark.parametrize("override, message", [
    ("optimizer.lrr=0.1", "unknown key optimizer.lrr; did you mean optimizer.lr?"),
    ("device_train_microbatch_size=12", "device_train_microbatch_size=12 does not divide the per-device batch 32"),
    ("model.encoder.num_self_attention_heads=four", "model.encoder.num_self_attention_heads='four': expected int"),
    ("global_train_batch_size=0", "global_train_batch_size=0: must be at least 1"),
    ("optimizer.lr=-1", "optimizer.lr=-1.0: must be positive"),
    ("precision=amp_bf16", "precision=amp_bf16 needs a GPU; use precision=fp32 on CPU"),
    ("parallelism.fsdp.version=1", "parallelism.fsdp.version=1 needs GPUs"),
    ("parallelism.fsdp.activation_checkpointing=true",
     "parallelism.fsdp.activation_checkpointing is no longer a key: set model.activation_checkpointing"),
    ("parallelism.fsdp.cpu_offload=true", "parallelism.fsdp.cpu_offload is no longer a key: Composer 0.32.1 has no"),
    ("model.vocab_size=1000", "model.vocab_size=1000 but tokenizer"),
    ("model.compile_backend=xla", "model.compile_backend='xla': expected one of inductor, cudagraphs, aot_eager"),
    ("save_folder={tmp}/a_file/checkpoints", "save_folder='{tmp}/a_file/checkpoints': cannot write checkpoints"),
    ("data.tokenizer={tmp}/empty", "data.tokenizer={tmp}/empty: cannot load a tokenizer"),
    ("data.streams.wikipedia.local={tmp}/truncated", "{tmp}/truncated/train/manifest.json is not valid JSON"),
    ("callbacks.probe_train_samples=5", "callbacks.probe_train_samples=5: expected at least 10"),
    ("save_folder=s3://bucket/runs", "parallelism.fsdp.state_dict_type=sharded with save_folder=s3://bucket/runs: "
                                     "Composer 0.32.1 cannot save sharded checkpoints to object storage"),
    ("callbacks.probes.rt={tmp}/empty", "callbacks.probes.rt={tmp}/empty: no {tmp}/empty/train/manifest.json"),
])
def test_user_mistakes_are_one_line_errors(tiny_shards, tmp_path, capsys, override, message):
    from train import main

    (tmp_path / "a_file").write_text("")
    (tmp_path / "empty").mkdir()
    (tmp_path / "truncated" / "train").mkdir(parents=True)
    (tmp_path / "truncated" / "train" / "manifest.json").write_text('{"format": "perceiver-str')
    fsdp = {"parallelism.fsdp.version": 2, **({"parallelism.fsdp.state_dict_type": "sharded"} if "s3://" in override
                                              else {})}
    overrides = tiny_overrides(tiny_shards, tmp_path, **fsdp if "fsdp" in override or "s3://" in override else {})
    with pytest.raises(SystemExit) as exit_info:
        main([TINY, *overrides, override.format(tmp=tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train.py: error: ") and "\n" not in err and message.format(tmp=tmp_path) in err


def test_compile_without_a_cpp_compiler_is_a_one_line_error(tiny_shards, tmp_path, capsys, monkeypatch):
    from torch._inductor import config as inductor_config

    from train import main

    monkeypatch.setattr(inductor_config.cpp, "cxx", (str(tmp_path / "no-such-compiler"),))
    with pytest.raises(SystemExit) as exit_info:
        main([TINY, *tiny_overrides(tiny_shards, tmp_path), "model.compile=true"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"train.py: error: model.compile=true needs a C++ compiler on CPU (inductor generates C++; {tmp_path}/"
        "no-such-compiler did not run): install g++, point CXX at a compiler, or set model.compile=false "
        "(or model.compile_backend=aot_eager, which generates no code)")


def test_a_malformed_yaml_is_named(tmp_path, capsys):
    from train import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {vocab_size: 3\n  bad: [\n")
    with pytest.raises(SystemExit) as exit_info:
        main([str(bad)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (f"train.py: error: {bad}: line 2, column 6 not valid yaml "
                                               "(did not find expected ',' or '}')")


def test_non_dividing_global_batch_on_two_processes(tiny_shards, tmp_path, capsys, monkeypatch):
    """Refused before the process group starts, from the launcher's WORLD_SIZE (set here as `composer -n 2` would)."""
    from train import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exit_info:
        main([TINY, *tiny_overrides(tiny_shards, tmp_path), "global_train_batch_size=33"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == ("train.py: error: global_train_batch_size=33 is not divisible by the 2 "
                                               "devices of this run")


def test_shards_of_another_tokenizer_are_refused(tiny_shards, tmp_path):
    bert = shared_path("tokenizers/bert-base-uncased")
    result = train([TINY, *tiny_overrides(tiny_shards, tmp_path), f"data.tokenizer={bert}",
                  "model.vocab_size=30522"])
    assert result.returncode == 2
    assert "stream 'wikipedia' (train): shards have tokenizer fingerprint" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_summary_prints_the_plan(tiny_shards, rotten_tomatoes, tmp_path, capsys):
    from train import main

    main([TINY, *tiny_overrides(tiny_shards, tmp_path), f"callbacks.probes.rt={rotten_tomatoes}",
          f"callbacks.probes.absent={tmp_path}", "--summary"])
    printed = capsys.readouterr().out
    manifest = json.loads((tiny_shards / "wikipedia" / "train" / "manifest.json").read_text())
    assert f"wikipedia/train proportion 0.5: {manifest['counts']['tokens']:,} tokens" in printed
    counts = {split: json.loads((rotten_tomatoes / split / "manifest.json").read_text())["counts"]["samples"]
              for split in ("train", "val")}
    assert (f"  rt: 2 labels, fitted on 4,096 of {counts['train']:,} train samples, scored on {counts['val']:,} val\n"
            f"  absent: no manifests under {tmp_path} yet") in printed
    assert "batch plan: 1 device(s) x 32 per device = 32 global; micro-batch 32, 1 accumulation step(s)" in printed
    main([str(REPO / "yamls" / "mlm_base.yaml"), "--summary"])
    printed = capsys.readouterr().out
    assert "model: 223,155,456 parameters" in printed
    assert "parallelism: FSDP1 FULL_SHARD" in printed


def wandb_records(run_dir: Path) -> tuple[set[str], dict[str, str]]:
    """History keys and config items of an offline run, read from its ``run-*.wandb`` record log."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal.datastore import DataStore

    (path,) = run_dir.glob("run-*.wandb")
    store = DataStore()
    store.open_for_scan(str(path))
    history, config = set(), {}
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            history |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        elif record.WhichOneof("record_type") == "config":
            config |= {item.key: item.value_json for item in record.config.update}
    return history, config


def test_wandb_offline_run_holds_metrics_and_fill_mask_table_and_the_console_the_run_s_progress(tiny_shards, tmp_path):
    overrides = tiny_overrides(tiny_shards, tmp_path, max_duration="10ba", eval_interval="10ba",
                               eval_subset_num_batches=1, console_log_interval="10ba",
                               **{"loggers.wandb.project": "test", "loggers.tensorboard": "null",
                                  "callbacks.speed_monitor_window": 5})
    result = train([TINY, *overrides], env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    history, config = wandb_records(run_dir)
    for key in ("loss/train/total", "metrics/train/MaskedAccuracy", "metrics/eval/MaskedAccuracy",
                "metrics/eval/LanguageCrossEntropy", "throughput/samples_per_sec", "lr-Lamb/group0",
                "fill_mask/_type", "l2_norm/grad/global", "time/first_batch_s"):
        assert key in history, key
    (table,) = (run_dir / "files" / "media" / "table").glob("fill_mask_10_*.table.json")
    rows = json.loads(table.read_text())["data"]
    assert rows[0][0] == "The capital of France is <mask>." and len(rows[0][1].split(" / ")) == 5
    assert json.loads(config["data_manifests"])["wikipedia/train"]["tokenizer"]["vocab_size"] == 32000
    assert json.loads(config["config"])["optimizer"]["name"] == "lamb"
    assert not (tmp_path / "tb").exists()
    # W&B has every parameter's gradient norm; the console (progress_bar=false) only the global one, and the
    # fill-mask predictions as log lines rather than a table's JSON
    assert "l2_norm/grad/model.encoder.latents" in history
    console = [line for line in result.stderr.splitlines() if not line.startswith("wandb:")]  # its run summary
    norms = [line.strip() for line in console if "l2_norm/" in line]
    assert norms and all(line.startswith("Train l2_norm/grad/global: ") for line in norms), norms[:5]
    assert sum("fill-mask The capital of France is <mask>. -> " in line for line in console) == 1
    assert not any("Eval fill_mask" in line for line in console)


def test_the_first_batch_time_is_logged_once():
    import time

    from perceiver_stream.train.callbacks import FirstBatchTime

    class Logger:
        logged: list[dict] = []

        def log_metrics(self, metrics: dict) -> None:
            self.logged.append(metrics)

    callback, logger = FirstBatchTime(), Logger()
    callback.batch_start(None, logger)
    time.sleep(0.2)
    callback.batch_end(None, logger)
    callback.batch_start(None, logger)
    callback.batch_end(None, logger)
    assert len(logger.logged) == 1 and 0.2 <= logger.logged[0]["time/first_batch_s"] < 1.0


def test_a_non_finite_loss_stops_the_run_before_it_is_saved(tiny_shards, tmp_path):
    import re

    import torch

    ckpt = tmp_path / "ckpt"
    overrides = tiny_overrides(tiny_shards, tmp_path, **{
        "optimizer.name": "adamw", "optimizer.lr": 1e12, "scheduler.t_warmup": "0ba",  # diverges within batches
        "max_duration": "12ba", "save_interval": "1ba", "save_folder": ckpt, "eval_interval": "100ba",
        "data.num_workers": 0, "global_train_batch_size": 8, "device_train_microbatch_size": 8})
    result = train([TINY, *overrides])
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    match = re.fullmatch(r"train\.py: error: the loss is (nan|inf) at batch (\d+) \(on this rank\): stopped before .*",
                         last)
    assert match, last
    batch = int(match.group(2))
    saved = sorted(int(re.search(r"ba(\d+)", p.name).group(1)) for p in ckpt.glob("ep*-ba*-rank0.pt"))
    assert saved == list(range(1, batch)), (saved, batch)
    latest = torch.load(ckpt / "latest-rank0.pt", map_location="cpu", weights_only=False)
    assert all(torch.isfinite(v).all() for v in latest["state"]["model"].values() if v.is_floating_point())


def test_processes_on_a_cpu_node_share_its_cores(monkeypatch):
    import os

    import torch

    from perceiver_stream.train.trainer import share_cpu_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        monkeypatch.setenv("OMP_NUM_THREADS", "7")  # the user's choice stands
        torch.set_num_threads(3)
        share_cpu_threads()
        assert torch.get_num_threads() == 3
        monkeypatch.delenv("OMP_NUM_THREADS")
        share_cpu_threads()
        assert torch.get_num_threads() == max(1, os.cpu_count() // 2)
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_training_on_a_read_only_volume_of_compressed_shards(tiny_shards, tmp_path):
    """``data.streams.NAME.local`` on a read-only mount of shards as a conversion leaves them (compressed) trains."""
    from tests.conftest import is_root, requires
    from tests.data.test_read_only import compressed_copy, files, read_only

    requires(is_root(), "needs root to mount a directory read-only")
    volume = compressed_copy(tiny_shards, tmp_path / "volume")
    before = files(volume)
    with read_only(volume, "bind mount"):
        result = train([TINY, *tiny_overrides(volume, tmp_path, **{
            "max_duration": "2ba", "eval_interval": "2ba", "eval_subset_num_batches": 1, "data.num_workers": 0,
            "data.cache_dir": tmp_path / "cache"})])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "is read-only and its shards compressed; decompressing them into" in result.stderr
    assert files(volume) == before and list((tmp_path / "cache").rglob("shard.*.mds"))
