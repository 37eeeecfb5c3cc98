"""Readers: every format, the real corpora, counted skips and clear errors naming the file."""

from __future__ import annotations

import bz2
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from perceiver_stream.convert import sources
from perceiver_stream.convert.input import InputError, Stats
from perceiver_stream.convert.sources import Source, expand_inputs, read_file, sniff_format
from tests.conftest import shared_path

BOOK = "\ufeffThe Project Gutenberg eBook of X\r\nLicence blah\r\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\r\n" \
       "Chapter 1\r\nIt was a dark night.\r\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\r\nFull licence text\r\n"
WIKI = '<doc id="1" url="u" title="Alpha">\nAlpha\n\nAlpha is a letter.\n</doc>\n' \
       '<doc id="2" url="u" title="Stub">\nStub\n</doc>\n<doc id="3" url="u" title="Beta">\nBeta\nBeta text.\n</doc>\n'


def docs(path, fmt="auto", text_field="text"):
    stats = Stats()
    return list(read_file(path, fmt, stats, text_field)), stats


def test_gutenberg_keeps_only_the_text_between_markers(tmp_path):
    path = tmp_path / "book.txt"
    path.write_bytes(BOOK.encode())
    assert sniff_format(path) == "gutenberg"
    (text,), _ = docs(path)
    assert text.strip() == "Chapter 1\nIt was a dark night."


def test_old_gutenberg_end_markers(tmp_path):
    path = tmp_path / "old.txt"
    path.write_text("header\n*** START OF THE PROJECT GUTENBERG ETEXT OF X ***\nBody.\n"
                    "End of The Project Gutenberg Etext of X\n***START**THE SMALL PRINT**\nlicence\n")
    (text,), _ = docs(path, "gutenberg")
    assert text.strip() == "Body."


def test_gutenberg_without_markers_is_counted(tmp_path):
    path = tmp_path / "b.txt"
    path.write_text("no markers")
    texts, stats = docs(path, "gutenberg")
    assert texts == [] and stats.skipped == {"gutenberg_without_markers": 1}


def test_wikiextractor_drops_titles_and_counts_stubs(tmp_path):
    path = tmp_path / "wiki_00"
    path.write_text(WIKI)
    assert sniff_format(path) == "wikiextractor"
    texts, stats = docs(path)
    assert texts == ["Alpha is a letter.", "Beta text."]
    assert stats.skipped == {"wikiextractor_stub": 1}


def test_real_wikipedia_extract():
    path = shared_path("corpora/wikipedia/enwiki2021_wiki_00")
    texts, stats = docs(path)
    raw = path.read_text()
    assert len(texts) + stats.skipped["wikiextractor_stub"] == raw.count("<doc ")
    assert stats.skipped["wikiextractor_stub"] > 0
    assert not any("<doc" in t or "</doc>" in t for t in texts)


def test_real_gutenberg_books_lose_their_licence():
    books = sorted(shared_path("corpora/books").glob("*.txt"))
    books = [b for b in books if "START OF" in b.read_text(encoding="utf-8-sig")[:100_000]]
    assert len(books) >= 90
    for book in books:
        (text,), _ = docs(book, "gutenberg")
        assert "*** START OF" not in text and "*** END OF" not in text
        assert "Project Gutenberg License" not in text
        assert "\r" not in text and not text.startswith("\ufeff")
        assert len(text) > 10_000


def test_undecodable_bytes_are_replaced_and_counted(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"caf\xe9 and \xff\xfe ok")
    (text,), stats = docs(path, "txt")
    assert text == "caf\ufffd and \ufffd\ufffd ok"
    assert stats.replaced_bytes == 3
    assert stats.worst_files(0.001) == [(str(path), 3 / len(path.read_bytes()))]
    assert stats.worst_files(3 / len(path.read_bytes())) == []


def test_jsonl_and_its_errors(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"body": "one"}) + "\n\n" + json.dumps({"body": "two"}) + "\n")
    assert docs(path, text_field="body")[0] == ["one", "two"]
    with pytest.raises(InputError, match=r"d\.jsonl:1: no --text-field 'text'"):
        docs(path)
    path.write_text('{"text": "a"}\n{broken\n')
    with pytest.raises(InputError, match=r"d\.jsonl:2: not a JSON object"):
        docs(path)


def test_parquet_and_missing_column(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"content": ["x", None, "y"]}), path)
    texts, stats = docs(path, text_field="content")
    assert texts == ["x", "y"] and stats.skipped == {"null_text": 1}
    with pytest.raises(InputError, match=r"d\.parquet: no --text-field 'text' column"):
        docs(path)
    numbers = tmp_path / "n.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), numbers)
    with pytest.raises(InputError, match=r"n\.parquet: column 'text' holds int64, not text"):
        docs(numbers)
    plain = tmp_path / "plain.txt"
    plain.write_text("just text\n")
    with pytest.raises(InputError, match=r"plain\.txt: not a parquet file .*pass the --format of what it holds"):
        docs(plain, "parquet")


def test_empty_documents_are_skipped_and_counted(tmp_path):
    (tmp_path / "a.txt").write_text("  \n ")
    (tmp_path / "b.txt").write_text("real text")
    stats = Stats()
    source = Source("files", files=tuple(str(p) for p in expand_inputs([str(tmp_path)])), fmt="txt")
    assert list(source.documents(stats)) == ["real text"]
    assert stats.skipped == {"empty": 1}


def test_inputs_expand_globs_and_directories_and_name_missing_paths(tmp_path):
    for name in ("b.txt", "a.txt", "sub/c.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(name)
    assert [p.name for p in expand_inputs([str(tmp_path / "*.txt")])] == ["a.txt", "b.txt"]
    assert [p.name for p in expand_inputs([str(tmp_path)])] == ["a.txt", "b.txt", "c.txt"]
    with pytest.raises(InputError, match="--input .*nope.txt: no such file"):
        expand_inputs([str(tmp_path / "nope.txt")])


DUMP = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">
<page><title>Alpha</title><ns>0</ns><id>1</id><revision><id>5</id><text xml:space="preserve">'''Alpha''' is a \
[[letter (alphabet)|letter]].{{Infobox letter|name=Alpha}}<ref>A citation.</ref>
{| class="wikitable"
| a table cell
|}
[[Category:Letters]]</text></revision></page>
<page><title>Talk:Alpha</title><ns>1</ns><id>2</id><revision><id>6</id><text>A talk page.</text></revision></page>
<page><title>A</title><ns>0</ns><id>3</id><redirect title="Alpha" /><revision><id>7</id><text>#REDIRECT [[Alpha]]\
</text></revision></page>
<page><title>Gamma</title><ns>0</ns><id>4</id><revision><id>8</id><text>{{Only a template}}</text></revision></page>
<page><title>Beta</title><ns>0</ns><id>5</id><revision><id>9</id><text>Beta is '''second'''.</text></revision></page>
</mediawiki>
"""


def write_dump(tmp_path) -> str:
    path = tmp_path / "enwiki-pages-articles.xml.bz2"
    path.write_bytes(bz2.compress(DUMP.encode()))
    return str(path)


def test_wikidump_articles_as_plain_text(tmp_path):
    stats = Stats()
    assert list(Source("files", files=(write_dump(tmp_path),)).documents(stats)) == [
        "Alpha is a letter.", "Beta is second."]
    assert stats.skipped == {"wikidump_not_article": 1, "wikidump_redirect": 1, "empty": 1}


def test_each_share_renders_only_its_own_articles(tmp_path, monkeypatch):
    rendered = []
    render = sources.wikitext_to_text
    monkeypatch.setattr(sources, "wikitext_to_text", lambda text: rendered.append(text) or render(text))
    source = Source("files", files=(write_dump(tmp_path),))
    shares, counts = [], []
    for k in range(2):
        rendered.clear()
        stats = Stats()
        shares.append(list(source.documents(stats, share=(k, 2))))
        counts.append(len(rendered))
        assert stats.skipped["wikidump_redirect"] == 1  # every share reads everything
    assert shares == [["Alpha is a letter.", "Beta is second."], []]  # articles 0 and 2 / article 1 (empty)
    assert counts == [2, 1]


def test_files_are_dealt_whole_and_balanced_by_size(tmp_path):
    sizes = [900, 100, 500, 400, 300, 250, 50]
    files = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"f{i}.txt"
        path.write_text("x" * size)
        files.append(str(path))
    shares = sources.deal_files(tuple(files), 3)
    assert sorted(f for share in shares for f in share) == sorted(files)  # each file once
    assert all(share == sorted(share, key=files.index) for share in shares)  # input order within a share
    loads = sorted(sum(sizes[files.index(f)] for f in share) for share in shares)
    assert loads == [800, 800, 900]  # largest first to the lightest: 900 | 500+250+50 | 400+300+100
    assert sources.deal_files(tuple(files), 3) == shares
