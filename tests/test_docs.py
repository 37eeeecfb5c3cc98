"""The documentation cannot drift: the configuration reference is what the code generates and documents every key,
each troubleshooting message is one the code can produce, relative links resolve, README stays a five-minute read
and lists every recipe, and no run log creeps into README or docs/."""

from __future__ import annotations

import ast
import re

import pytest

from perceiver_stream.reference import keys, reference
from perceiver_stream.train.config import ClassifierTrainConfig, TrainConfig
from tests.conftest import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md")), REPO / "gpu" / "README.md", REPO / "experiments" / "README.md"]
PREFIXES = ("train.py: error: ", "perceiver-train: error: ", "perceiver-convert: error: ", "perceiver-export: error: ")
HOLE = "\0"


def test_the_configuration_reference_is_generated_and_documents_every_key():
    assert (DOCS / "configuration.md").read_text() == reference(), \
        "regenerate: python -m perceiver_stream.reference > docs/configuration.md"
    undocumented = [k.name for cls in (TrainConfig, ClassifierTrainConfig) for k in keys(cls) if not k.meaning]
    assert undocumented == []


def test_the_reference_would_fail_on_a_key_without_a_meaning():
    from dataclasses import dataclass

    @dataclass
    class Section:
        """A section.

        Attributes:
            documented: has a meaning,
                on two lines.
            a, b: shared.
        """

        documented: int = 1
        a: int = 2
        b: int = 3
        forgotten: int = 4

    assert {k.name: k.meaning for k in keys(Section)} == {
        "documented": "has a meaning, on two lines.", "a": "shared.", "b": "shared.", "forgotten": ""}


def _templates(node: ast.AST) -> str | None:
    """A string expression's text with a hole for every part computed at run time (f-string fields, ``%s``-style
    fields, non-string operands of ``+``), or None for an expression that holds no string."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.sub(r"%[-#0 +]*\d*(?:\.\d+)?[sdrfgx]", HOLE, node.value)
    if isinstance(node, ast.JoinedStr):
        return "".join(_templates(part) or HOLE if isinstance(part, ast.Constant) else HOLE for part in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _templates(node.left), _templates(node.right)
        if left is None and right is None:
            return None
        return (left or HOLE) + (right or HOLE)
    return None


def code_messages() -> list[str]:
    """Every string the code can print, as templates with holes."""
    found = []
    for path in [*(REPO / "perceiver_stream").rglob("*.py"), *(REPO / "convert").glob("*.py"), REPO / "train.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.BinOp | ast.JoinedStr | ast.Constant) and (text := _templates(node)):
                found.append(text)
    return found


def producible(message: str, templates: list[str]) -> bool:
    """Whether the code can print ``message`` (``…`` for its variable parts): each of its fixed fragments stands in a
    string of the code, between two of its run-time parts (a message may be one string wrapped in another)."""
    fragments = [f.strip() for f in message.split("…") if f.strip()]
    return bool(fragments) and all(any(fragment in part for template in templates for part in template.split(HOLE))
                                   for fragment in fragments)


def troubleshooting_messages() -> list[str]:
    return [re.match(r"- `([^`]+)`", line).group(1) for line in (DOCS / "troubleshooting.md").read_text().splitlines()
            if line.startswith("- `")]


def test_every_troubleshooting_message_is_one_the_code_can_produce():
    messages = troubleshooting_messages()
    assert len(messages) >= 25
    templates = code_messages()
    unproducible = [m for m in messages if not producible(
        next((m.removeprefix(prefix) for prefix in PREFIXES if m.startswith(prefix)), m), templates)]
    assert unproducible == []


def test_the_message_check_tells_a_drifted_message():
    templates = [_templates(ast.parse(source).body[0].value) for source in (
        'f"save_folder={folder} is in use by {holder}: two runs"',
        'f"model.num_classes={n} but the shards " + f"have {m} labels"')]
    assert templates[1] == "model.num_classes=\0 but the shards have \0 labels"
    assert producible("model.num_classes=… but the shards have … labels", templates)
    assert not producible("model.num_classes=… but the shards hold … labels", templates)
    assert not producible("the shards have … labels and more", templates)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    links = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
    broken = [link for link in links if not re.match(r"[a-z]+://|#|mailto:", link)
              and not (page.parent / link.split("#")[0]).exists()]
    assert broken == []


def test_readme_is_a_five_minute_read():
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= 250 and len(text.encode()) <= 16 * 1024
    assert any("composer train.py yamls/mlm_base.yaml" in line for line in lines[:80])
    recipes = {p.stem for p in (REPO / "yamls").glob("*.yaml")}
    listed = set(re.findall(r"`(\w+)`", text))
    assert recipes <= listed, recipes - listed


RUN_LOG = [r"\bissue #?\d+", r"\bsession\b", r"\blent\b", r"\bloan", r"\b\d{1,2}:\d{2}\b", r"\bsuite (?:took|time)",
           r"\d+m\d+s\b", r"\bminutes from a fresh clone", r"\bthis session"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_run_log(page):
    text = page.read_text()
    if page.name == "benchmarks.md":  # its table's date column is allowed
        text = re.sub(r"\b20\d\d-\d\d-\d\d\b", "", text)
    else:
        assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), "dates belong in docs/benchmarks.md's table"
    found = [m.group(0) for pattern in RUN_LOG for m in re.finditer(pattern, text, re.I)]
    assert found == []
