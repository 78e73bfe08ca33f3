"""Typed config objects from JSON: one conversion for the client's and the coordinator's configs.

Both sides keep their configuration in frozen dataclasses and read it from JSON files. JSON has no
paths, tuples or nested objects of a given type, so a record is converted field by field from the
dataclass's own type hints; unknown keys are refused rather than silently dropped (a misspelt
option would otherwise fall back to its default without a word).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["from_mapping", "load_json"]

T = TypeVar("T")


def _convert(hint: Any, value: Any, what: str) -> Any:
    if value is None:
        return None
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
        hint = next((a for a in args if a is not type(None)), hint)
        args = typing.get_args(hint)
    if hint is Path:
        return Path(value)
    if typing.get_origin(hint) is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return from_mapping(hint, value, what)
    return value


def from_mapping(cls: type[T], data: Mapping[str, Any], what: str) -> T:
    """Build dataclass ``cls`` from a JSON record; ``what`` names it in error messages."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"unknown {what} key(s): {sorted(unknown)}")
    required = {
        name for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    missing = required - set(data)
    if missing:
        raise ValueError(f"{what} is missing: {sorted(missing)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _convert(hints[k], v, f"{what} {k!r}") for k, v in data.items()})


def load_json(cls: type[T], path: Path, what: str) -> T:
    """Read a JSON file into ``cls``; every failure is a ``ValueError`` that names the file."""
    try:
        return from_mapping(cls, json.loads(Path(path).read_text()), what)
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from exc
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"{what} {path} is invalid: {exc}") from exc
