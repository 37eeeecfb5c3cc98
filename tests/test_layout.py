"""The architecture's direction of dependencies: the library (perceiver_stream) never reaches up into the converter
(``convert/``, installed as ``perceiver_stream.convert``), and the converter's modules form no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

CONVERTER = "perceiver_stream.convert."


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_library_imports_nothing_from_the_converter():
    offenders = {str(p.relative_to(REPO)): sorted(m for m in imports(p) if m.startswith(CONVERTER))
                 for p in (REPO / "perceiver_stream").rglob("*.py")}
    assert {path: modules for path, modules in offenders.items() if modules} == {}


def test_converter_modules_import_no_cycle():
    graph = {p.stem: {m.removeprefix(CONVERTER).split(".")[0] for m in imports(p) if m.startswith(CONVERTER)}
             for p in (REPO / "convert").glob("*.py")}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(n == target or (n not in seen and reaches(n, target, seen | {n})) for n in graph.get(start, ()))

    assert [module for module in graph if reaches(module, module, {module})] == []
