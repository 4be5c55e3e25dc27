"""Build frozen dataclasses from YAML mappings, strictly.

Unknown keys fail with the closest valid key (nanoGPT's `Unknown config key`, not TRL's silent
ignore), values are checked against the field's type, and every error names the file, the line and
the dotted field, e.g. ``params.yaml:41: train.learnig_rate: unknown key; did you mean 'learning_rate'?``
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from kotune.errors import ConfigError


def read_yaml_with_lines(path: str | Path) -> tuple[dict, dict[str, int]]:
    """Load a YAML mapping and the line number of every dotted key in it."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    lines: dict[str, int] = {}
    _collect_lines(node, "", lines)
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data, lines


def _collect_lines(node: Any, prefix: str, lines: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            lines[key] = key_node.start_mark.line + 1
            _collect_lines(value_node, key + ".", lines)


class Origin:
    """Where values came from, so errors can say `file:line: field`."""

    def __init__(self, file: str = "<params>", lines: dict[str, int] | None = None):
        self.file, self.lines = file, lines or {}

    def at(self, field: str) -> str:
        line = self.lines.get(field)
        while line is None and "." in field:
            field = field.rsplit(".", 1)[0]
            line = self.lines.get(field)
        return f"{self.file}:{line}" if line else self.file


def build(cls: type, values: Any, where: str, origin: Origin | None = None):
    """Instantiate dataclass `cls` from `values`, naming `where` (a dotted field) in every error."""
    origin = origin or Origin()
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{origin.at(where)}: {where}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise ConfigError(f"{origin.at(f'{where}.{key}')}: {where}.{key}: unknown key; {suggest(key, names)}")
    kwargs = {key: coerce(hints[key], value, f"{where}.{key}", origin) for key, value in values.items()}
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"{origin.at(where)}: {where}: {exc}") from None


def suggest(key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(names)}"


def coerce(tp: Any, value: Any, where: str, origin: Origin) -> Any:
    """Check `value` against type `tp`; lists become tuples so configs stay hashable and frozen."""
    origin_type, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where, origin)
    if origin_type in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(arg, value, where, origin)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[-1])
    if origin_type is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            # YAML 1.1 (PyYAML) reads a bare no, off, yes or on as a boolean before kotune sees it.
            hint = (" (YAML reads a bare no/off/yes/on as a boolean: quote it, e.g. 'no')"
                    if isinstance(value, bool) else "")
            raise ConfigError(f"{origin.at(where)}: {where}: {value!r} is not one of {choices}{hint}")
        return value
    if origin_type is tuple:
        if not isinstance(value, list | tuple):
            _fail(where, origin, "a list", value)
        return tuple(coerce(args[0], item, f"{where}[{i}]", origin) for i, item in enumerate(value))
    if origin_type is dict:
        if not isinstance(value, dict):
            _fail(where, origin, "a mapping", value)
        return {str(k): coerce(args[1], v, f"{where}.{k}", origin) for k, v in value.items()}
    return _scalar(tp, value, where, origin)


def _scalar(tp: Any, value: Any, where: str, origin: Origin) -> Any:
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            _fail(where, origin, "true or false", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(where, origin, "an integer", value)
        return value
    if tp is float:
        # PyYAML reads `1e-4` (no dot) as a string; accept it as the number the user meant.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                _fail(where, origin, "a number", value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            _fail(where, origin, "a number", value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(where, origin, "a string", value)
        return value
    raise TypeError(f"typed_config cannot check type {tp!r} of {where}")


def _fail(where: str, origin: Origin, expected: str, value: Any) -> typing.NoReturn:
    raise ConfigError(f"{origin.at(where)}: {where}: expected {expected}, got {value!r}")


def to_dict(config: Any) -> Any:
    """A dataclass back to plain YAML-able data (tuples become lists)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, tuple | list):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config
