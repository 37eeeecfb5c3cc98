"""End-to-end conversion: determinism, manifests, safe output, the wikibook path, tokenizer training."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from streaming import StreamingDataset
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from perceiver_stream.convert.cli import main
from perceiver_stream.convert.input import Stats
from perceiver_stream.convert.sources import Source
from perceiver_stream.convert.writer import Options, close_worker_pool, convert, is_val
from perceiver_stream.data.format import PADDING, SPECIAL
from perceiver_stream.data.shared_memory import shared_memory_registration
from perceiver_stream.data.tokenizer import fingerprint
from tests.conftest import REPO, shared_path
from tests.convert.test_sources import write_dump


def xlnet() -> str:
    return str(shared_path("tokenizers/xlnet-base-cased"))


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(*argv: str) -> None:
    main([str(a) for a in argv])


def read_all(split: Path) -> list[dict]:
    with shared_memory_registration():
        dataset = StreamingDataset(local=str(split), shuffle=False, batch_size=1)
    return [dataset[i] for i in range(len(dataset))]


def test_conversion_is_deterministic_and_manifest_adds_up(tmp_path, wiki_files):
    options = Options(tokenizer=xlnet(), max_seq_len=128, val_fraction=0.05, workers=2)
    manifests = convert({".": Source("files", files=tuple(wiki_files))}, tmp_path / "a", options)
    convert({".": Source("files", files=tuple(wiki_files))}, tmp_path / "b", options)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")

    tokenizer = AutoTokenizer.from_pretrained(xlnet())
    stats = Stats()
    documents = list(Source("files", files=tuple(wiki_files)).documents(stats))
    val_docs = sum(is_val(d, 0.05) for d in documents)
    assert 0.03 < val_docs / len(documents) < 0.07
    train, val = manifests["train"], manifests["val"]
    assert (train["counts"]["documents"], val["counts"]["documents"]) == (len(documents) - val_docs, val_docs)
    assert train["source_counts"]["documents_skipped"] == dict(stats.skipped)
    assert train["tokenizer"]["fingerprint"] == fingerprint(tokenizer)
    assert train["tokenizer"]["vocab_size"] == 32000 and train["token_dtype"] == "uint16"
    assert train["tokenizer"]["mask_token_id"] == 6 and train["tokenizer"]["separator_token_id"] == 4
    for manifest in (train, val):
        counts = manifest["counts"]
        separators = counts["documents"]
        assert counts["samples"] * 128 == counts["tokens"] + separators + counts["padding_tokens"]

    samples = read_all(tmp_path / "a" / "train")
    assert len(samples) == train["counts"]["samples"]
    assert samples[0]["input_ids"].dtype == np.uint16 and samples[0]["input_ids"].shape == (128,)
    types = np.stack([s["token_type"] for s in samples])
    ids = np.stack([s["input_ids"] for s in samples])
    assert (ids[types == SPECIAL] == 4).all() and (types == SPECIAL).sum() == train["counts"]["documents"]
    assert (ids[types == PADDING] == 5).all()


def test_worker_count_changes_only_the_order(tmp_path, wiki_files):
    one = convert({".": Source("files", files=tuple(wiki_files))}, tmp_path / "one",
                  Options(tokenizer=xlnet(), max_seq_len=64, workers=1, val_fraction=0.1))
    three = convert({".": Source("files", files=tuple(wiki_files))}, tmp_path / "three",
                    Options(tokenizer=xlnet(), max_seq_len=64, workers=3, val_fraction=0.1))
    for split in ("train", "val"):
        assert one[split]["counts"]["tokens"] == three[split]["counts"]["tokens"]
        assert one[split]["counts"]["documents"] == three[split]["counts"]["documents"]


def test_worker_counts_add_up_when_each_worker_renders_its_share(tmp_path):
    manifests = convert({".": Source("files", files=(write_dump(tmp_path),))}, tmp_path / "out",
                        Options(tokenizer=xlnet(), max_seq_len=32, val_fraction=0.0, workers=2))
    assert manifests["train"]["counts"]["documents"] == 2
    assert manifests["train"]["source_counts"]["documents_skipped"] == {
        "empty": 1, "wikidump_not_article": 1, "wikidump_redirect": 1}


def test_non_empty_out_is_refused_and_overwrite_replaces_only_an_earlier_output(tmp_path, wiki_files, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    args = ["text", "--input", wiki_files[0], "--tokenizer", xlnet(), "--out", out, "--workers", "1"]
    for extra, message in (([], f"--out {out}: exists and is not empty"),
                           (["--overwrite"], f"--out {out}: is not an earlier perceiver-convert output")):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(*args, *extra)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
        assert (out / "precious.txt").read_text() == "keep me"
    (out / "precious.txt").unlink()
    run_cli(*args)
    first = (out / "train" / "manifest.json").read_text()
    run_cli(*args, "--overwrite")  # an earlier output is replaced
    assert (out / "train" / "manifest.json").read_text() == first
    (out / "train" / "notes.txt").write_text("mine")  # ... but not one a user has added files to
    with pytest.raises(SystemExit):
        run_cli(*args, "--overwrite")
    assert (out / "train" / "notes.txt").exists()


def test_overwrite_never_deletes_an_input(tmp_path, wiki_files, capsys):
    corpus = tmp_path / "x" / "corpus"
    corpus.mkdir(parents=True)
    (corpus / "wiki").write_text(Path(wiki_files[0]).read_text())
    with pytest.raises(SystemExit) as exit_info:
        run_cli("text", "--input", corpus, "--tokenizer", xlnet(), "--out", tmp_path / "x", "--overwrite",
                "--workers", "1")
    assert exit_info.value.code == 2
    assert f"--out {tmp_path / 'x'}: holds the input {corpus / 'wiki'}" in capsys.readouterr().err
    assert (corpus / "wiki").exists()


@pytest.mark.parametrize("argv, message", [
    (["--input", "/nonexistent/file.txt"], "--input /nonexistent/file.txt: no such file"),
    (["--format", "jsonl"], "no --text-field 'text' in this record"),
    (["--format", "jsonl", "--workers", "2"], "no --text-field 'text' in this record"),  # raised in a worker
    (["--tokenizer", "/nonexistent/tokenizer"], "--tokenizer /nonexistent/tokenizer: cannot load"),
])
def test_bad_input_is_a_clear_error(tmp_path, wiki_files, capsys, argv, message):
    args = {"--input": wiki_files[0], "--tokenizer": xlnet(), "--out": str(tmp_path / "o"), "--workers": "1"}
    if "--format" in argv:
        (tmp_path / "d.jsonl").write_text('{"body": "x"}\n')
        args["--input"] = str(tmp_path / "d.jsonl")
    for key, value in zip(argv[::2], argv[1::2], strict=True):
        args[key] = value
    with pytest.raises(SystemExit) as exit_info:
        run_cli("text", *[x for kv in args.items() for x in kv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def convert_cli(tmp_path, capsys, *extra: str, inputs=()) -> tuple[int, str]:
    """Exit status and stderr+stdout of ``perceiver-convert text`` into ``tmp_path / "o"``."""
    try:
        run_cli("text", "--input", *inputs, "--tokenizer", xlnet(), "--out", tmp_path / "o", "--workers", "1", *extra)
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def test_input_that_is_not_utf8_text_fails_naming_the_file(tmp_path, wiki_files, capsys):
    garbage = tmp_path / "garbage.txt"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    latin1 = tmp_path / "latin1.txt"
    text = "Déjà vu à la française, naïve façade. " * 200
    latin1.write_bytes(text.encode("latin-1"))
    code, out = convert_cli(tmp_path, capsys, "--format", "txt", inputs=(wiki_files[0], garbage, latin1))
    assert code == 2
    assert (f"2 input file(s) are not UTF-8 text beyond --max-replaced-fraction 0.001: {garbage} (" in out
            and f"{latin1} (" in out and "iconv -f latin1" in out)
    assert not (tmp_path / "o").exists() and not (tmp_path / ".o.partial").exists()
    code, out = convert_cli(tmp_path, capsys, "--format", "txt", "--max-replaced-fraction", "1",
                            inputs=(wiki_files[0], latin1))
    assert code == 0
    replaced = json.loads((tmp_path / "o" / "train" / "manifest.json").read_text())["source_counts"]
    accents = sum(not c.isascii() for c in text)  # each a lone latin-1 byte that is not UTF-8
    assert replaced["undecodable_bytes_replaced"] == accents
    assert f"undecodable bytes replaced: {accents:,};" in out


def test_empty_input_is_an_error_not_an_empty_dataset(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    code, out = convert_cli(tmp_path, capsys, inputs=(tmp_path / "empty.txt",))
    assert code == 2
    assert "the input gives no samples (no text to convert; skipped documents: {'empty': 1})" in out
    assert not (tmp_path / "o").exists()


def test_auto_format_skips_and_counts_files_that_are_not_text(tmp_path, wiki_files, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "wiki.txt").write_text(Path(wiki_files[0]).read_text()[:20_000])
    png = corpus / "figure.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8)
    code, out = convert_cli(tmp_path, capsys, inputs=(corpus,))
    assert code == 0 and "skipped documents: not_text_file 1, wikiextractor_stub " in out
    counts = json.loads((tmp_path / "o" / "train" / "manifest.json").read_text())["source_counts"]
    assert counts["files_not_text"] == [str(png)] and counts["undecodable_bytes_replaced"] == 0


def test_unusable_out_and_tokenizer_directory_are_one_line_errors(tmp_path, wiki_files, capsys):
    (tmp_path / "a_file").write_text("")
    code, out = convert_cli(tmp_path, capsys, "--out", tmp_path / "a_file" / "out", inputs=(wiki_files[0],))
    assert code == 2 and f"--out {tmp_path / 'a_file' / 'out'}: cannot write there" in out
    (tmp_path / "empty_tokenizer").mkdir()
    code, out = convert_cli(tmp_path, capsys, "--tokenizer", tmp_path / "empty_tokenizer", inputs=(wiki_files[0],))
    assert code == 2 and f"--tokenizer {tmp_path / 'empty_tokenizer'}: cannot load a tokenizer" in out
    assert not (tmp_path / "o").exists()


def test_tokenizer_without_mask_token_is_refused(tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({"a": 0, "<unk>": 1, "<pad>": 2}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>").save_pretrained(
        str(tmp_path / "tok"))
    (tmp_path / "a.txt").write_text("a a a")
    with pytest.raises(SystemExit):
        run_cli("text", "--input", tmp_path / "a.txt", "--tokenizer", tmp_path / "tok", "--out", tmp_path / "o")
    assert "has no mask_token, sep_token (or eos_token)" in capsys.readouterr().err


def test_killed_conversion_leaves_nothing_that_looks_finished(tmp_path):
    books = str(shared_path("corpora/books"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "perceiver_stream.convert", "text", "--input", books, "--tokenizer", xlnet(),
           "--out", str(out), "--workers", "1"]
    process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / ".out.partial"
    deadline = time.monotonic() + 60
    while not list(partial.glob("train/part-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # mid-conversion: tokenizing books, writing the MDS group
    assert process.poll() is None
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert partial.exists() and not out.exists()
    subprocess.run(cmd[:5] + [str(shared_path("corpora/books/" + sorted(os.listdir(books))[0]))] + cmd[6:],
                   cwd=REPO, check=True, capture_output=True)
    assert not partial.exists() and (out / "train" / "manifest.json").exists()


def _workers(pid: int) -> list[int]:
    """The conversion workers (spawned pool processes) whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killing_the_converter_stops_its_workers(tmp_path, sig):
    fifo = tmp_path / "doc.txt"
    os.mkfifo(fifo)  # every worker blocks opening it: they are alive and busy when the parent is killed
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "perceiver_stream.convert", "text", "--input", str(fifo),
                                "--format", "txt", "--tokenizer", xlnet(), "--out", str(out), "--workers", "2"],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(workers := _workers(process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(workers) == 2
    time.sleep(1.0)  # the workers' parent check runs
    process.send_signal(sig)
    _, err = process.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_alive, workers))
    if sig == signal.SIGTERM:
        assert process.returncode == 130
        assert f"perceiver-convert: interrupted; nothing was written to {out}" in err
        assert not out.exists() and not (tmp_path / ".out.partial").exists()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
def test_a_killed_worker_is_an_error_not_a_hang(tmp_path):
    fifo = tmp_path / "doc.txt"
    os.mkfifo(fifo)  # every worker blocks opening it, so there is time to kill one
    errors = []

    def kill_one_worker() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            workers = _workers(os.getpid())
            if len(workers) == 2:
                os.kill(workers[0], signal.SIGKILL)
                return
            time.sleep(0.05)
        errors.append("the two workers never started")

    close_worker_pool()  # workers kept from an earlier conversion would be killed before this one starts
    killer = threading.Thread(target=kill_one_worker)
    killer.start()
    with pytest.raises(RuntimeError, match="a conversion worker died"):
        convert({".": Source("files", files=(str(fifo),), fmt="txt")}, tmp_path / "out", Options(tokenizer=xlnet(),
                                                                                          workers=2))
    killer.join()
    assert not errors
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
def test_workers_kept_between_conversions_are_replaced_when_one_died_idle(tmp_path):
    """The two workers stay after a conversion (their imports cost ~12 s each); one killed in between, the next
    conversion starts new ones and gives the same output."""
    options = Options(tokenizer=xlnet(), max_seq_len=64, workers=2)
    files = []
    for i in range(2):
        files.append(tmp_path / f"doc{i}.txt")
        files[-1].write_text(f"The {i}th document of a small corpus, long enough for a sample or two.\n" * 20)
    source = Source("files", files=tuple(map(str, files)))
    convert({".": source}, tmp_path / "a", options)
    kept = _workers(os.getpid())
    assert len(kept) == 2
    os.kill(kept[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while kept[0] in _workers(os.getpid()) and time.monotonic() < deadline:  # dead: a zombie has no cmdline
        time.sleep(0.05)
    convert({".": source}, tmp_path / "b", options)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert kept[0] not in _workers(os.getpid())


def test_tokenizer_training_makes_a_loadable_fast_tokenizer(tmp_path, wiki_files):
    run_cli("tokenizer", "--input", wiki_files[0], "--vocab-size", "2000", "--every", "2", "--out", tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert tokenizer.is_fast and len(tokenizer) == 2000
    assert [tokenizer.pad_token, tokenizer.mask_token, tokenizer.cls_token, tokenizer.sep_token,
            tokenizer.unk_token] == ["<pad>", "<mask>", "<cls>", "<sep>", "<unk>"]
    text = "The album was released in 2019 by the band."
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text and tokenizer.unk_token_id not in ids
    assert tokenizer.convert_ids_to_tokens(ids)[0].startswith("\u2581")
    # line breaks and tabs inside a document are word boundaries, not unknown pieces gluing two words together
    broken = tokenizer("The album was\nreleased in\t2019 by\n\nthe band.", add_special_tokens=False)
    assert broken.input_ids == ids and broken.word_ids() == tokenizer(text, add_special_tokens=False).word_ids()


def test_inspect_shows_counts_and_word_boundaries(tmp_path, wiki_files, capsys):
    run_cli("text", "--input", wiki_files[0], "--tokenizer", xlnet(), "--out", tmp_path / "o", "--workers", "1")
    capsys.readouterr()
    run_cli("inspect", tmp_path / "o")
    out = capsys.readouterr().out
    manifest = json.loads((tmp_path / "o" / "train" / "manifest.json").read_text())
    assert f"{manifest['counts']['samples']:>10,}" in out
    assert " | " in out and "[<sep>]" in out
