"""How a config's TOML values become typed fields (the cattrs converter), and each refusal in words.

A value of the wrong kind is refused where it enters, naming the field, the value and
what to write instead: ``family = 'vit': use one of 'minilm-efficientnet', 'tiny', … @
$.model.family``. Nothing is coerced behind the user's back: ``2.5`` is not an integer,
``true`` not a number, ``"xy"`` not a list of targets, ``3`` not a string.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any, Literal

import attrs
import cattrs
from cattrs.cols import list_structure_factory, mapping_structure_factory
from cattrs.gen import make_dict_structure_fn

from moil.harness.config_checks import FieldError

__all__ = ["BadValue", "problems_of", "structure_converter"]


class BadValue(ValueError):
    """A value of the wrong kind: ``fix`` says what the field takes."""

    def __init__(self, value: Any, fix: str) -> None:
        shown = str(value).lower() if isinstance(value, bool) else repr(value)  # TOML's true, not True
        super().__init__(f"{shown}: {fix}")
        self.value, self.fix = value, fix


def _as_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadValue(value, "expected a number, e.g. 1e-3")
    return float(value)


def _number_or_list(value: Any, _type: Any) -> float | list[float]:
    return [_as_number(v) for v in value] if isinstance(value, list) else _as_number(value)


def _text_or_number(value: Any, _type: Any) -> str | float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadValue(value, 'expected a number or a quoted spec, e.g. 0.99 or "half-life:20"')
    return value if isinstance(value, str) else float(value)


def _integer(value: Any, _type: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadValue(value, "expected an integer (no decimal point, no quotes)")
    return value


def _boolean(value: Any, _type: Any) -> bool:
    if not isinstance(value, bool):
        raise BadValue(value, "expected true or false")
    return value


def _text(value: Any, _type: Any) -> str:
    if not isinstance(value, str):
        raise BadValue(value, "expected a string in quotes")
    return value


def _literal(value: Any, type_: Any) -> Any:
    choices = typing.get_args(type_)
    if not isinstance(value, str) or value not in choices:
        raise BadValue(value, "use one of " + ", ".join(repr(c) for c in choices))
    return value


def _lists(type_: Any, converter: cattrs.Converter):
    items = list_structure_factory(type_, converter)

    def structure(value: Any, t: Any) -> list:
        if not isinstance(value, list):
            raise BadValue(value, "expected a list in brackets [ … ] (of tables: [[…]] sections)")
        return items(value, t)

    return structure


def _mappings(type_: Any, converter: cattrs.Converter):
    items = mapping_structure_factory(type_, converter)

    def structure(value: Any, t: Any) -> dict:
        if not isinstance(value, dict):
            raise BadValue(value, "expected a table { key = value, … }")
        return items(value, t)

    return structure


def _tables(type_: Any, converter: cattrs.Converter):
    fields = make_dict_structure_fn(type_, converter)

    def structure(value: Any, t: Any) -> Any:
        if not isinstance(value, dict):
            raise BadValue(value, "expected a table of fields (a [section] or { key = value, … })")
        return fields(value, t)

    return structure


def _optional(type_: Any) -> Any:
    """``X`` of ``X | None`` (``None`` for any other type)."""
    args = typing.get_args(type_)
    if typing.get_origin(type_) in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        return next(a for a in args if a is not type(None))
    return None


def structure_converter() -> cattrs.Converter:
    """The cattrs converter of configs: unknown keys refused, numbers never silently
    truncated (``2.5`` workers), booleans never taken for integers, nothing else coerced."""
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(int, _integer)
    converter.register_structure_hook(bool, _boolean)  # else bool, an int subclass, takes the int hook
    converter.register_structure_hook(float, lambda v, t: _as_number(v))
    converter.register_structure_hook(str, _text)
    converter.register_structure_hook_func(lambda t: typing.get_origin(t) is Literal, _literal)
    converter.register_structure_hook_factory(lambda t: typing.get_origin(t) is list, lambda t: _lists(t, converter))
    converter.register_structure_hook_factory(lambda t: typing.get_origin(t) is dict, lambda t: _mappings(t, converter))
    converter.register_structure_hook_factory(attrs.has, lambda t: _tables(t, converter))
    converter.register_structure_hook_func(  # X | None: the X hook (cattrs passes some values through)
        _optional, lambda v, t: None if v is None else converter.structure(v, _optional(t)),
    )
    converter.register_structure_hook(float | list[float], _number_or_list)
    converter.register_structure_hook(
        float | list[float] | dict[str, float | list[float]],
        lambda v, t: {str(k): _number_or_list(x, t) for k, x in v.items()} if isinstance(v, dict) else _number_or_list(v, t),
    )
    converter.register_structure_hook(str | float, _text_or_number)
    converter.register_structure_hook(
        str | float | None, lambda v, t: None if v is None else _text_or_number(v, t)
    )
    return converter


_FIELD_MARK = re.compile(r"\x00(\w+) @ (\S+)$")
_VALUE_MARK = re.compile(r"^\x01(.*) @ (\S*?)([^.\s]+)$", re.DOTALL)


def _describe(exc: BaseException, type_: Any) -> str:
    # Our validators' messages name the field and the fix; keep them verbatim, and
    # mark the field so that its path ends in it: "... @ $.arms[0].lr". A value of the
    # wrong kind is marked to be named by its field: "rank = 'x': expected an integer".
    if isinstance(exc, FieldError):
        return str(exc) + (f"\x00{exc.field}" if exc.field else "")
    if isinstance(exc, BadValue):
        return f"\x01{exc}"
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        known = ", ".join(f.name for f in attrs.fields(exc.cl))
        unknown = ", ".join(repr(k) for k in sorted(exc.extra_fields))
        return f"unknown field {unknown}: this table's fields are {known} (see docs/config.md)"
    if type(exc) is ValueError and "must" in str(exc):
        return str(exc)
    return f"this value cannot be read: {exc}"  # a value our hooks let through; still in words


def _named(problem: str) -> str:
    problem = _FIELD_MARK.sub(r" @ \2.\1", problem)
    match = _VALUE_MARK.match(problem)
    if match:
        text, parent, name = match.groups()
        return f"{name} = {text} @ {parent}{name}"
    return problem


def problems_of(err: BaseException) -> list[str]:
    """Every problem of a failed structure, one line each, ending in the value's path."""
    if not isinstance(err, cattrs.BaseValidationError):
        return [str(err)]
    return [_named(p) for p in cattrs.transform_error(err, path="$", format_exception=_describe)]
