"""The wikibook path without network: local directories laid out like the hub's parquet datasets stand in for
Wikipedia and BookCorpus, cached and streamed, with 2 workers; and one-line errors for datasets that do not load."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from perceiver_stream.convert.input import Stats
from perceiver_stream.convert.sources import Source
from tests.convert.test_convert import run_cli, tree_digest, xlnet

CONFIG = "20231101.en"


@pytest.fixture(scope="module")
def hub(tmp_path_factory, wiki_files):
    """``wiki`` like wikimedia/wikipedia (a config directory declared in README.md, two parquet files) and
    ``books`` like a single-config parquet repository (data/train-*.parquet)."""
    root = tmp_path_factory.mktemp("hub")
    articles = list(Source("files", files=tuple(wiki_files[:1])).documents(Stats()))[:120]
    wiki = root / "wiki"
    (wiki / CONFIG).mkdir(parents=True)
    (wiki / "README.md").write_text(f"---\nconfigs:\n- config_name: {CONFIG}\n  data_files:\n  - split: train\n"
                                    f"    path: {CONFIG}/train-*\n---\n")
    for i in range(2):
        rows = articles[i::2]
        pq.write_table(pa.table({"id": [str(n) for n in range(len(rows))], "text": rows}),
                       wiki / CONFIG / f"train-0000{i}-of-00002.parquet")
    books = root / "books"
    (books / "data").mkdir(parents=True)
    lines = [line for line in open(wiki_files[1]).read().split("\n") if len(line) > 40][:400]
    for i in range(2):
        pq.write_table(pa.table({"text": lines[i * 200:(i + 1) * 200]}),
                       books / "data" / f"train-0000{i}-of-00002.parquet")
    return {"wiki": wiki, "books": books, "articles": len(articles), "lines": len(lines)}


@pytest.mark.parametrize("streaming", [False, True])
def test_wikibook_from_parquet_datasets_with_two_workers(hub, tmp_path, streaming):
    argv = ["wikibook", "--wikipedia", f"{hub['wiki']}:{CONFIG}", "--bookcorpus", str(hub["books"]),
            "--tokenizer", xlnet(), "--workers", "2", "--max-seq-len", "128", *(["--streaming"] if streaming else [])]
    run_cli(*argv, "--out", tmp_path / "a")
    if streaming:  # the workers read parts of one stream: the output is still a pure function of the arguments
        run_cli(*argv, "--out", tmp_path / "b")
        assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    for stream, rows, name, config in (("wikipedia", hub["articles"], hub["wiki"], CONFIG),
                                       ("bookcorpus", hub["lines"], hub["books"], None)):
        manifests = [json.loads((tmp_path / "a" / stream / s / "manifest.json").read_text()) for s in ("train", "val")]
        assert sum(m["counts"]["documents"] for m in manifests) == rows
        assert manifests[0]["source"] == {"hub": str(name), "config": config, "revision": None, "commit": None,
                                          "split": "train", "streaming": streaming, "text_field": "text"}


def error_of(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(*argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()  # after datasets' progress bars, if any
    errors = [line for line in lines if "error" in line.lower() or "Traceback" in line]
    assert len(errors) == 1 and errors[0] == lines[-1] and lines[-1].startswith("perceiver-convert: error: "), lines
    return lines[-1]


@pytest.mark.parametrize("streaming", [False, True])
def test_datasets_that_do_not_load_are_one_line_errors(hub, tmp_path, capsys, monkeypatch, streaming):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    scripted = tmp_path / "scripted"
    scripted.mkdir()
    (scripted / "scripted.py").write_text("import datasets\n")
    no_text = tmp_path / "no_text"
    (no_text / "data").mkdir(parents=True)
    pq.write_table(pa.table({"content": ["a", "b"]}), no_text / "data" / "train-00000-of-00001.parquet")
    out = tmp_path / "out"
    base = ["wikibook", "--tokenizer", xlnet(), "--out", out, "--workers", "2", "--bookcorpus", str(hub["books"]),
            *(["--streaming"] if streaming else [])]
    cases = {
        "nonexistent-org/nonexistent-dataset": "the hub is unreachable",
        str(scripted): "it is a loading-script dataset, which datasets >= 4 no longer runs",
        f"{hub['wiki']}:no-such-config": "cannot load",
        str(no_text): "no 'text' column (columns: ['content']); pass --text-field",
    }
    for spec, message in cases.items():
        err = error_of(capsys, *base, "--wikipedia", spec)
        assert f"hub dataset {spec}: " in err and message in err, err
        assert not out.exists() and not (tmp_path / ".out.partial").exists()
    assert "--wikipedia 'a:': expected NAME[:CONFIG][@REVISION]" in error_of(capsys, *base, "--wikipedia", "a:")
    if streaming:  # a stream opens its second file only in the worker that reads it: the error crosses processes
        broken = tmp_path / "broken"
        (broken / "data").mkdir(parents=True)
        pq.write_table(pa.table({"text": ["fine"] * 10}), broken / "data" / "train-00000-of-00002.parquet")
        (broken / "data" / "train-00001-of-00002.parquet").write_bytes(b"PAR1" + bytes(1000) + b"PAR1")
        err = error_of(capsys, *base, "--wikipedia", str(broken))
        assert f"hub dataset {broken}: cannot load (" in err
        assert not out.exists() and not (tmp_path / ".out.partial").exists()
