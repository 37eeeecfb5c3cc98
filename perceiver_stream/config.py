"""yaml + dot-list overrides -> typed dataclasses, with errors that name the key.

One way to configure a run: the yaml. ``load`` merges command-line ``key=value`` overrides (omegaconf
dot-list syntax; ``key=null`` switches a section off), then ``build`` converts the result into nested
dataclasses, rejecting unknown keys (suggesting the closest valid ones) and values of the wrong type before
anything heavy starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from perceiver_stream.errors import first_line

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration error; the message names the key and what was expected."""


def load(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The yaml at ``path`` with ``overrides`` (``a.b=value``) merged in, as plain containers."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such configuration file")
    try:
        merged = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides or [])))
        return OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {first_line(e)}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} not valid yaml ({getattr(e, 'problem', None) or e})") from None


def build(cls: type[T], data: Any, path: str = "") -> T:
    """An instance of dataclass ``cls`` from ``data`` (nested dicts), validated key by key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path.rstrip('.') or 'configuration'}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    removed = getattr(cls, "REMOVED_KEYS", {})
    for key in data:
        if key in removed:
            raise ConfigError(f"{path}{key} is no longer a key: {removed[key]}")
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(path + c for c in close)}?" if close else \
                f"; valid keys: {', '.join(sorted(fields))}"
            raise ConfigError(f"unknown key {path}{key}{hint}")
    hints = typing.get_type_hints(cls)
    kwargs = {key: _convert(hints[key], value, f"{path}{key}") for key, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def _convert(annotation: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(option, value, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(annotation):
        return build(annotation, value, f"{path}.")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}={value!r}: expected a mapping")
        return {k: _convert(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}={value!r}: expected a list")
        return [_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if annotation is Any:
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool) and (type(value) is not annotation):
        raise ConfigError(f"{path}={value!r}: expected {annotation.__name__}")
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain containers (for logging)."""
    return dataclasses.asdict(config)


RECIPES = "perceiver_stream.recipes"  # the yamls/ folder, installed as package data


def recipe_names() -> list[str]:
    """The packaged recipes (``yamls/*.yaml``) by name."""
    return sorted(entry.name.removesuffix(".yaml") for entry in resources.files(RECIPES).iterdir()
                  if entry.name.endswith(".yaml"))


def resolve_config(name_or_path: str) -> Path:
    """A yaml file's path, or a packaged recipe's (``mlm_base``, ``mlm_tiny.yaml``) when no such file exists here."""
    path = Path(name_or_path)
    if path.exists() or path.parent != Path("."):
        return path
    recipe = resources.files(RECIPES) / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if recipe.is_file():
        return Path(str(recipe))
    raise ConfigError(f"{name_or_path}: no such configuration file or packaged recipe (recipes: "
                      f"{', '.join(recipe_names())})")
