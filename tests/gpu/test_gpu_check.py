"""gpu/gpu_check.py without a GPU: the refusal, the skip paths, every part at a tiny shape, a failed run's reason,
the wheel list and the installer of the wheels a machine lacks (gpu/gpu_site.py)."""

from __future__ import annotations

import importlib.metadata
import json
import re
import sys
import zipfile
from pathlib import Path

import pytest
from transformers import PerceiverForMaskedLM

from perceiver_stream.model.hf import to_hf_config
from tests.conftest import REPO, run, shared_path

CHECK = str(REPO / "gpu" / "gpu_check.py")


def test_refuses_without_a_cuda_device():
    result = run([sys.executable, CHECK], env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2
    assert result.stderr.strip() == ("gpu/gpu_check.py: needs a CUDA device (none is visible to torch); see "
                                     "gpu/README.md")


def import_gpu_check():
    sys.path.insert(0, str(REPO / "gpu"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    return gpu_check


def test_missing_package_or_corpus_skips_the_part_with_the_reason(tmp_path):
    gpu_check = import_gpu_check()
    with pytest.raises(gpu_check.Skip, match="no_such_module_for_the_test does not import .*gpu/gpu_wheels.sh"):
        gpu_check.require("json", "no_such_module_for_the_test")
    out = tmp_path / "result.json"
    assert gpu_check.main(["--smoke", "--parts", "train", "--corpus", str(tmp_path / "absent"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["train"]["skipped"] == (f"--corpus {tmp_path / 'absent'} does not exist (gpu/gpu_wheels.sh stages "
                                          "both into .gpu/)")
    assert gpu_check.peak_tflops("NVIDIA H200") == 989.0 and gpu_check.peak_tflops("Tesla T4") is None


def test_every_part_runs_at_a_tiny_shape_on_the_cpu(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    articles = shared_path("corpora/wikipedia/enwiki2021_wiki_00").read_text().split("</doc>")
    (corpus / "wiki").write_text("</doc>".join(articles[:150]) + "</doc>\n")  # enough for a val split
    out = tmp_path / "result.json"
    result = run([sys.executable, CHECK, "--smoke", "--steps", "2", "--out", str(out), "--corpus", str(corpus),
                  "--tokenizer", str(shared_path("tokenizers/xlnet-base-cased"))], env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed == json.loads(out.read_text())
    model = printed["model"]
    gpu_check = import_gpu_check()
    config = gpu_check.base_config(smoke=True)
    # what the smoke run can get wrong: the model it built, each figure's arithmetic, the decisions it reports
    assert model["parameters"] == sum(p.numel() for p in PerceiverForMaskedLM(to_hf_config(config)).parameters())
    assert model["seq_len"] == config.max_seq_len
    for key in ("ours_no_ac", "ours_ac", "hf_no_ac"):
        entry = model[key]
        assert entry["largest_micro_batch"] in gpu_check.CANDIDATE_BATCHES and entry["micro_batch"] == \
            entry["largest_micro_batch"]
        expected = entry["micro_batch"] * model["seq_len"] / entry["step_s"]
        assert abs(entry["tokens_per_s"] - expected) <= 0.02 * expected, entry  # step_s is rounded to 0.1 ms
        assert entry["peak_memory_gib"] is None and "mfu" not in entry  # no CUDA: no memory figure, no peak
    assert "skipped" in model["hf_ac"] or model["hf_ac"]["tokens_per_s"] > 0
    same = model["same_micro_batch"]
    assert same["micro_batch"] == model["hf_no_ac"]["largest_micro_batch"]
    assert same["ratio"] == round(same["ours_tokens_per_s"] / same["hf_tokens_per_s"], 3)
    assert model["blueprint_batch_fits_with_ac"] == (
        model["ours_ac"]["largest_micro_batch"] >= gpu_check.BLUEPRINT_DEVICE_BATCH)
    compiled = printed["compile"]
    assert compiled["micro_batch"] == same["micro_batch"]
    for mode in ("eager", "compiled"):
        assert compiled[f"ratio_{mode}"] == round(
            compiled[f"ours_{mode}"]["tokens_per_s"] / compiled[f"hf_{mode}"]["tokens_per_s"], 3)
    assert compiled["ours_compiled_speedup"] == round(
        compiled["ours_eager"]["step_s"] / compiled["ours_compiled"]["step_s"], 3)
    for kind in ("ours", "hf"):  # the compiled step's first call traced the model: it took longer than eager's
        assert compiled[f"{kind}_compiled"]["first_step_s"] > compiled[f"{kind}_eager"]["first_step_s"], compiled
    restart = compiled["restart"]  # a fresh process ran ours' compiled step; backend eager: no inductor graphs
    assert restart["first_step_s"] > 0 and restart["loaded_graphs"] == restart["cache_misses"] == 0, restart
    lamb = printed["lamb"]
    # the speedup is of the unrounded times; each reported time is rounded to 0.01 ms, the speedup to 0.01
    ours_ms, reference_ms = lamb["ours_ms"], lamb["torch_optimizer_ms"]
    assert ours_ms > 0.005
    assert (reference_ms - 0.005) / (ours_ms + 0.005) - 0.005 <= lamb["speedup"] <= \
        (reference_ms + 0.005) / (ours_ms - 0.005) + 0.005, lamb
    # every part ran: none skipped, none failed (transformers' model has no gradient checkpointing to measure)
    entries = [("model", key, value) for key, value in model.items() if isinstance(value, dict)] + [
        (part, None, printed[part]) for part in ("compile", "lamb", "train")]
    broken = [(part, key) for part, key, entry in entries if key != "hf_ac" and (
        "skipped" in entry or '"error"' in json.dumps(entry))]
    assert not broken, printed
    log = (tmp_path / "result-train-fsdp2.log").read_text()  # the run's whole output, kept beside --out
    logged = re.findall(r"Train throughput/tokens_per_sec: ([\d.]+)", log)
    # TensorBoard keeps float32 (7 significant digits), the console prints 4 decimals of the float64 it logged
    assert logged and abs(printed["train"]["fsdp2"]["tokens_per_s"] - float(logged[-1])) <= \
        1e-6 * float(logged[-1]) + 1e-4, (logged[-1], printed["train"])
    assert "Eval metrics/eval/MaskTokenAccuracy" in log


def test_wheel_list_pins_what_this_project_installs():
    result = run(["bash", str(REPO / "gpu" / "gpu_wheels.sh"), "--list"])
    assert result.returncode == 0
    wheels = dict(line.split("==") for line in result.stdout.split())
    for package in ("mosaicml", "mosaicml-streaming", "torch-optimizer", "omegaconf", "mwparserfromhell"):
        assert wheels[package] == importlib.metadata.version(package), package


def test_a_failed_train_run_is_reported_by_its_reason_not_the_launchers_last_line():
    gpu_check = import_gpu_check()
    traceback = "\n".join([
        "[rank0]: Traceback (most recent call last):",
        "[rank0]: ModuleNotFoundError: No module named 'pandas'",
        "[rank0]: The above exception was the direct cause of the following exception:",
        "[rank0]: composer.utils.import_helpers.MissingConditionalImportError: Composer was installed without pandas",
        "ERROR:__main__:Rank 0 crashed with exit code 1.",
        "Global rank 0 (PID 384) exited with code 1"])
    assert gpu_check.failure(traceback) == ("[rank0]: composer.utils.import_helpers.MissingConditionalImportError: "
                                            "Composer was installed without pandas")
    ours = "perceiver-train: error: data.tokenizer=x: cannot load a tokenizer (no such directory)"
    assert gpu_check.failure(f"{traceback}\n{ours}") == ours
    assert gpu_check.failure("killed\nGlobal rank 0 (PID 1) exited with code -9") == \
        "Global rank 0 (PID 1) exited with code -9"
    assert gpu_check.failure("") == "(no output)"


def wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel of one empty module, as pip installs it."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}.py": "", f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{member},,\n" for member in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


def test_gpu_site_installs_the_missing_wheels_and_keeps_the_machines_own(tmp_path):
    staged = tmp_path / "whl"
    staged.mkdir()
    absent = wheel(staged, "perceiver_gpu_site_probe", "1.0")
    wheel(staged, "tqdm", "0.0.1")  # installed here at another version: the machine's copy is kept
    wheel(staged, "python_dateutil", "0.0.1")  # the file name's spelling of python-dateutil, installed here
    target = tmp_path / "site"
    result = run([sys.executable, str(REPO / "gpu" / "gpu_site.py"), "--wheels", str(staged), "--target",
                  str(target)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"gpu_site.py: installed 1 wheel(s) into {target}; kept this machine's python_dateutil "
        f"{importlib.metadata.version('python-dateutil')}, tqdm {importlib.metadata.version('tqdm')}")
    assert (target / "perceiver_gpu_site_probe.py").is_file() and not (target / "tqdm.py").exists()
    assert absent.exists()
    empty = run([sys.executable, str(REPO / "gpu" / "gpu_site.py"), "--wheels", str(tmp_path / "none")])
    assert empty.returncode == 2 and empty.stderr.strip() == (
        f"gpu_site.py: error: no wheels in {tmp_path / 'none'}; stage them with gpu/gpu_wheels.sh")
