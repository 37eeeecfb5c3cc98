"""The configuration reference, ``docs/configuration.md``, generated from the config dataclasses: every key a yaml
may hold, with its type, default and meaning (the ``Attributes:`` of the class that declares it).

``python -m perceiver_stream.reference > docs/configuration.md`` writes it; a test checks that the file is what this
prints and that no key lacks a meaning, so the page cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from dataclasses import MISSING, dataclass
from typing import Any

from perceiver_stream.train.config import ClassifierTrainConfig, TrainConfig

HEADER = """# Configuration reference

Every key a training yaml may hold (`yamls/*.yaml`, `perceiver-train RECIPE key=value ...`), generated from the
configuration dataclasses by `python -m perceiver_stream.reference > docs/configuration.md` (a test keeps the two
equal). Unknown keys are errors that name the closest valid ones; `key=null` switches a section off. A key's
default is what a yaml that leaves it out gets; the recipes set many of them (see the recipes table in the README).
"""


@dataclass(frozen=True)
class Key:
    """One configuration key: its dotted name, type, default and meaning."""

    name: str
    type: str
    default: str
    meaning: str


def attributes(cls: type) -> dict[str, str]:
    """``{field: meaning}`` from the ``Attributes:`` sections of ``cls`` and its bases (Google style: an entry is
    indented once, its continuation lines more; an entry may name several fields, ``a, b: meaning``)."""
    meanings: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = inspect.cleandoc(vars(klass).get("__doc__") or "")
        if "Attributes:" not in doc:
            continue
        entries: list[str] = []
        for line in doc.split("Attributes:", 1)[1].splitlines()[1:]:
            if line and not line.startswith(" "):  # the section ends at the next paragraph
                break
            if re.match(r" {4}\S", line):
                entries.append(line.strip())
            elif line.strip() and entries:
                entries[-1] += " " + line.strip()
        for entry in entries:
            names, _, meaning = entry.partition(": ")
            for name in names.split(","):
                meanings[name.strip()] = meaning
    return meanings


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"mapping of {_type_name(args[1])}"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: dataclasses.Field) -> Any:
    if field.default is not MISSING:
        return field.default
    if field.default_factory is not MISSING:
        return field.default_factory()
    return MISSING


def _shown(value: Any) -> str:
    if value is MISSING:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if dataclasses.is_dataclass(value):
        return "(section)"
    return repr(value) if isinstance(value, str) else str(value)


def _section(annotation: Any) -> tuple[type | None, bool]:
    """The dataclass a field's annotation holds (directly, optionally, or as a mapping's values), and whether it is a
    mapping of them (``data.streams.NAME``)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        return annotation, False
    if origin in (typing.Union, types.UnionType):
        found = [a for a in args if dataclasses.is_dataclass(a)]
        return (found[0], False) if found else (None, False)
    if origin is dict and args:
        inner, _ = _section(args[1])
        return inner, inner is not None
    return None, False


def keys(cls: type, prefix: str = "") -> list[Key]:
    """Every key of the config dataclass ``cls``, nested sections flattened (``model.encoder.dropout``)."""
    hints = typing.get_type_hints(cls)
    meanings = attributes(cls)
    found = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        name = f"{prefix}{field.name}"
        annotation = hints[field.name]
        section, mapping = _section(annotation)
        if section is not None and field.name not in ("fill_mask_sentences",):
            if mapping:
                found.append(Key(name, "mapping of NAME to a section", _shown(_default(field)),
                                 meanings.get(field.name, "")))
                found += keys(section, f"{name}.NAME.")
            else:
                optional = type(None) in typing.get_args(annotation)
                found.append(Key(name, "section" + (" or null" if optional else ""), _shown(_default(field)),
                                 meanings.get(field.name, "")))
                found += keys(section, f"{name}.")
            continue
        found.append(Key(name, _type_name(annotation), _shown(_default(field)), meanings.get(field.name, "")))
    return found


def table(rows: list[Key]) -> str:
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key in rows:
        cells = [f"`{key.name}`", key.type, f"`{key.default}`", key.meaning.replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reference() -> str:
    """The page: pretraining's keys (``task: mlm``), then what a classifier's run (``task: classification``) has
    instead under ``model:`` and ``data:``."""
    mlm = keys(TrainConfig)
    classifier = [k for k in keys(ClassifierTrainConfig) if k.name.startswith(("model.", "data."))]
    mlm_names = {(k.name, k.type, k.default) for k in mlm}
    differing = [k for k in classifier if (k.name, k.type, k.default) not in mlm_names]
    return "\n".join([
        HEADER,
        "## Pretraining (`task: mlm`)\n",
        table(mlm),
        "",
        "## Fine-tuning a classifier (`task: classification`)\n",
        "The same keys, except these under `model:` and `data:` (a classifier's model has a classification decoder and "
        "no masking; its data are labelled shards):\n",
        table(differing),
        "",
    ])


if __name__ == "__main__":
    print(reference(), end="")
