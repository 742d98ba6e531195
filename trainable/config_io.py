"""Reading plain data into frozen dataclasses: YAML files, `key=value` assignments, leaf types.

Knows no particular schema: trainable.config holds the Config tree, its defaults and its range
checks, and re-exports these names, so callers import everything from trainable.config.
"""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A bad configuration value; the message starts with the dotted key."""


def _coerce(key: str, value: object, kind: type) -> object:
    """Check one leaf value against its annotated type; ints are accepted for floats.

    Numeric strings such as '1e-4' are accepted for numbers: PyYAML reads them as strings.
    """
    if typing.get_origin(kind) is tuple:          # a YAML list; None or '' = empty
        if value is None or value == "" or isinstance(value, (list, tuple)):
            return tuple(_coerce(f"{key}[{i}]", v, typing.get_args(kind)[0]) for i, v in enumerate(value or ()))
        raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
    if kind in (int, float) and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):        # YAML 1.1 reads on/off as booleans: the switches mean them
            return "on" if value else "off"
    type_name = getattr(kind, "__name__", str(kind))
    raise ConfigError(f"{key}: expected {type_name}, got {type(value).__name__} {value!r}")


def build(cls: type, data: Mapping, prefix: str = "") -> object:
    """An instance of dataclass cls from nested plain data; unknown keys and wrong types raise."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(names))})")
    values = {}
    for name, value in data.items():
        kind, key = hints[name], f"{prefix}.{name}" if prefix else name
        if dataclasses.is_dataclass(kind):
            values[name] = build(kind, value, key)
        else:
            values[name] = _coerce(key, value, kind)
    return cls(**values)


def flatten(data: Mapping, prefix: str = "") -> dict[str, object]:
    """Nested dict → {dotted.key: leaf}."""
    flat: dict[str, object] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def parse_assignment(text: str) -> tuple[str, object]:
    """'model.width=0.25' → ('model.width', 0.25); the value is read as YAML (safe loader)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{text}: an override must look like key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"{key.strip()}: cannot read value {raw!r}: {yaml_problem(err)}") from None
    return key.strip(), value


def yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's message in one line, without its "<unicode string>" and source excerpt."""
    parts = [getattr(err, "context", None), getattr(err, "problem", None)]
    return ": ".join(p for p in parts if p) or str(err).splitlines()[0]


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with the safe loader; errors name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {yaml_problem(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data
