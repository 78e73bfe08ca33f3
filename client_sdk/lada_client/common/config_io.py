"""Config objects that validate themselves, and reading them from JSON.

Both sides' settings (``ClientConfig``, ``CoordinatorConfig`` and what they nest) are pydantic
dataclasses made with :func:`settings`: frozen, keyword or
positional construction, ``dataclasses.replace``/``asdict``/``fields`` as before, and every field
checked on construction. Scalars are strict (the types below: ``"16"`` is not an integer, ``1``
is not ``True``), because a config file with a quoted number is a mistake the device should report
before it runs, not a value to guess at; paths accept strings, tuples JSON lists and nested
settings JSON objects, which is all JSON can say. Every failure is one :class:`ConfigError`
listing each bad field by its dotted name; an unknown key is an error too (a misspelt option
would otherwise fall back to its default without a word).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import sys
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import ConfigDict, Field, Strict, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

if sys.version_info >= (3, 11):
    from typing import dataclass_transform
else:  # pydantic depends on typing_extensions
    from typing_extensions import dataclass_transform

__all__ = [
    "Bool",
    "ConfigError",
    "NonNegativeFloat",
    "NonNegativeInt",
    "PositiveFloat",
    "PositiveInt",
    "Str",
    "load_json",
    "settings",
    "validate",
]

T = TypeVar("T")

# Strict scalars for settings fields (an int is still a valid float, as in JSON).
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]
PositiveFloat = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]

_SETTINGS_CONFIG = ConfigDict(extra="forbid")


class ConfigError(ValueError):
    """A config that fails validation. ``problems`` holds one ``(field, message)`` per bad field,
    the field as a dotted path (``lora.r``, ``features[1]``); ``what`` names the config and, when
    it was read from a file, the file."""

    def __init__(self, what: str, problems: Sequence[tuple[str, str]]) -> None:
        self.what = what
        self.problems: tuple[tuple[str, str], ...] = tuple(problems)
        super().__init__(self._render())

    def _render(self) -> str:
        lines = [f"{field}: {message}" if field else message for field, message in self.problems]
        if len(lines) == 1:
            return f"{self.what}: {lines[0]}"
        return f"{self.what} has {len(lines)} invalid fields:\n" + "\n".join(f"  {line}" for line in lines)

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, tuple[tuple[str, str], ...]]]:
        return type(self), (self.what, self.problems)  # picklable across processes

    def located(self, what: str) -> ConfigError:
        """The same problems, attributed to ``what`` (e.g. the config and the file it came from)."""
        return ConfigError(what, self.problems)

    @classmethod
    def from_validation(cls, exc: ValidationError, what: str, model: type | None = None) -> ConfigError:
        errors = exc.errors(include_url=False)
        # pydantic counts only the valid items of a list against its minimum length, so one bad item
        # of a one-item list also reads "too short": the item's own error says it all
        bad_items = {tuple(e["loc"][:-1]) for e in errors if e["loc"] and isinstance(e["loc"][-1], int)}
        kept = [e for e in errors if not (e["type"] == "too_short" and tuple(e["loc"]) in bad_items)]
        return cls(what, [_problem(error, model) for error in kept])


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def settings(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen, strictly validated pydantic dataclass whose construction errors
    (also through ``dataclasses.replace``) are :class:`ConfigError`, not pydantic's report."""
    model: Any = pydantic_dataclass(frozen=True, config=_SETTINGS_CONFIG)(cls)
    validated_init = model.__init__

    @functools.wraps(validated_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            validated_init(self, *args, **kwargs)
        except ValidationError as exc:
            raise ConfigError.from_validation(exc, model.__name__, model) from None

    model.__init__ = __init__
    return typing.cast("type[T]", model)


def validate(cls: type[T], data: object, what: str) -> T:
    """``cls`` (a :func:`settings` class) from a JSON record; errors name ``what`` and each field."""
    if not isinstance(data, Mapping):
        raise ConfigError(what, [("", f"must be a JSON object, got {_kind(data)}")])
    validator = typing.cast(Any, cls).__pydantic_validator__
    try:
        return typing.cast(T, validator.validate_python(dict(data)))
    except ValidationError as exc:
        raise ConfigError.from_validation(exc, what, cls) from None


# ------------------------------------------------------------------------------ error messages
def _kind(value: object) -> str:
    names = {
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        list: "a list",
        dict: "an object",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _got(error: Mapping[str, Any]) -> str:
    value = error.get("input")
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"got {text} ({_kind(value)})" if not isinstance(value, (dict, list)) else f"got {_kind(value)}"


_TYPE_MESSAGES: dict[str, str] = {
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "path_type": "must be a path (a string)",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "dataclass_type": "must be an object",
    "dataclass_args_type": "must be an object",
    "finite_number": "must be a finite number",
}

_BOUNDS: dict[str, tuple[str, str]] = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}


def _problem(error: Mapping[str, Any], model: type | None) -> tuple[str, str]:
    loc = tuple(error.get("loc", ()))
    field = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc))
    kind, ctx = error.get("type", ""), error.get("ctx") or {}
    if kind in _TYPE_MESSAGES:
        return field, f"{_TYPE_MESSAGES[kind]}, {_got(error)}"
    if kind in _BOUNDS:
        op, key = _BOUNDS[kind]
        bound = ctx.get(key)
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return field, f"must be {op} {bound}, {_got(error)}"
    if kind == "literal_error":
        return field, f"must be {ctx.get('expected')}, {_got(error)}"
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        known = _field_names(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1) if loc and known else []
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(known)}" if known else ""
        return field, f"unknown field{hint}"
    if kind in ("missing", "missing_argument"):
        return field, "is required"
    if kind == "too_short":
        return field, f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "string_too_short":
        return field, "must not be empty"
    if kind == "string_too_long":
        return field, f"must be at most {ctx.get('max_length')} characters"
    if kind == "string_pattern_mismatch":
        return field, f"must match {ctx.get('pattern')}, {_got(error)}"
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return field, message[:1].lower() + message[1:]


def _field_names(model: type | None, loc: tuple[Any, ...]) -> list[str]:
    """The field names of the (nested) settings class at ``loc``, for 'did you mean'."""
    for part in loc:
        if model is None or not dataclasses.is_dataclass(model):
            return []
        hints = typing.get_type_hints(model)
        model = _dataclass_in(hints.get(str(part)))
    if model is None or not dataclasses.is_dataclass(model):
        return []
    return [f.name for f in dataclasses.fields(model)]


def _dataclass_in(hint: Any) -> type | None:
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
            return candidate
    return None


# ------------------------------------------------------------------------------------- files
def load_json(cls: type[T], path: Path, what: str, given: Mapping[str, Any] | None = None) -> T:
    """Read a JSON file into ``cls``; every failure is a ``ValueError`` that names the file, a
    :class:`ConfigError` when fields are wrong. ``given`` fields replace the file's before it is
    checked (a command-line flag that completes what the file says)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} {path} is invalid: {exc}") from exc
    if given and isinstance(data, Mapping):
        data = {**data, **given}
    try:
        return validate(cls, data, what)
    except ConfigError as exc:
        raise exc.located(f"{what} {path}") from None
    except TypeError as exc:
        raise ValueError(f"{what} {path} is invalid: {exc}") from exc
    except ValueError as exc:
        if str(exc).startswith(what):
            raise ValueError(f"{what} {path}: {str(exc)[len(what) :].lstrip(' :')}") from exc
        raise ValueError(f"{what} {path}: {exc}") from exc
