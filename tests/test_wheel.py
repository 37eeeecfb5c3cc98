"""The wheel does the whole job: built as a user builds it and installed into a fresh virtual environment with nothing
of the checkout on the path, it converts text, pretrains a packaged recipe and exports the model, which transformers'
fill-mask pipeline then runs, all from an empty directory (fine-tuning is the same entry point with another packaged
recipe: tests/train/test_finetune.py). Its dependencies come from the test environment (a
path entry, without its editable install of this checkout), so nothing is downloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, shared_path


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtual environment holding the wheel alone; returns its bin directory."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(root / "dist"), str(REPO)], check=True, capture_output=True)
    (wheel,) = (root / "dist").glob("perceiver_stream-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    bin_dir = root / "venv" / "bin"
    (site,) = (root / "venv" / "lib").glob("python*/site-packages")
    (site / "test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    return bin_dir


def in_empty_dir(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_wheel_ships_the_recipes_and_the_converter_under_the_projects_name(installed, tmp_path):
    (wheel,) = (installed.parents[1] / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n.removeprefix("perceiver_stream/recipes/") for n in names if n.endswith(".yaml")) == sorted(
        p.name for p in (REPO / "yamls").glob("*.yaml"))
    assert "perceiver_stream/convert/cli.py" in names and not any(n.startswith("convert/") for n in names)
    probe = ("import importlib.util, perceiver_stream; print(perceiver_stream.__file__); "
             "print(importlib.util.find_spec('convert'))")
    result = in_empty_dir(installed, tmp_path, str(installed / "python"), "-c", probe)
    assert result.returncode == 0, result.stderr
    location, convert = result.stdout.split()
    assert Path(location).is_relative_to(installed.parent) and convert == "None"
    listed = in_empty_dir(installed, tmp_path, str(installed / "perceiver-train"), "--recipes")
    assert listed.stdout.split() == sorted(p.stem for p in (REPO / "yamls").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_convert_train_export_from_an_empty_directory(installed, tmp_path):
    tokenizer = str(shared_path("tokenizers/xlnet-base-cased"))
    articles = shared_path("corpora/wikipedia/enwiki2021_wiki_00").read_text().split("</doc>")
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": a.split(">", 1)[-1].strip()}) + "\n"
                                                   for a in articles[:300]))

    def ok(*args: str) -> str:
        result = in_empty_dir(installed, tmp_path, *args)
        assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-3000:])
        return result.stdout

    ok("perceiver-convert", "text", "--input", "corpus.jsonl", "--tokenizer", tokenizer, "--max-seq-len", "128",
       "--val-fraction", "0.1", "--workers", "1", "--out", "shards")
    quick = ["progress_bar=false", "loggers.tensorboard=null", "data.num_workers=0", "eval_subset_num_batches=1",
             "global_train_batch_size=8", "device_train_microbatch_size=8", "device_eval_batch_size=8"]
    ok("perceiver-train", "mlm_tiny", "data.streams.wikipedia.local=shards", "data.streams.bookcorpus=null",
       f"data.tokenizer={tokenizer}", "max_duration=3ba", "eval_interval=3ba", "save_folder=mlm", "save_interval=3ba",
       *quick)
    ok("perceiver-export", "mlm/latest-rank0.pt", "--out", "hf-mlm")
    fill = ("import json, sys; from transformers import pipeline; "
            "print(json.dumps(pipeline('fill-mask', model='hf-mlm')('The capital of France is <mask>.', top_k=3)))")
    predictions = json.loads(ok("python", "-c", fill).strip().splitlines()[-1])
    assert len(predictions) == 3 and all(p["sequence"].startswith("The capital of France is") for p in predictions)
