"""Components as JSON: an ``attrs`` instance ⇄ ``{"class": "module:QualName", "fields": {...}}``.

What :mod:`moil.export.student` stores to rebuild an approximation. Only
``attrs`` classes are rebuilt, from JSON values passed to their ``__init__``;
classes outside ``moil.`` are imported only with ``trust_user_classes=True``
(importing a module runs its code).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["decode_component", "encode_component"]


def encode_component(obj: Any) -> dict[str, Any]:
    """``{"class": "module:QualName", "fields": {...}}`` for an ``attrs`` instance.

    Fields are those ``__init__`` accepts (by their init name); values may be
    ``None``, bools, numbers, strings, lists, tuples, sets, str-keyed dicts and
    nested ``attrs`` instances. Tuples, sets and dicts are tagged so they decode
    to the same types.
    """
    cls = type(obj)
    if not attrs.has(cls):
        raise TypeError(
            f"{cls.__qualname__} is not an attrs class; only attrs components can be stored."
        )
    if "<locals>" in cls.__qualname__:
        raise TypeError(
            f"{cls.__qualname__} is defined inside a function; define it at module level."
        )
    fields = {
        f.alias: _encode(getattr(obj, f.name), f"{cls.__qualname__}.{f.name}")
        for f in attrs.fields(cls)
        if f.init
    }
    return {"class": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}


def _encode(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_encode(v, where) for v in value]
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, where) for v in value]}
    if isinstance(value, (set, frozenset)):
        return {"__frozenset__": sorted((_encode(v, where) for v in value), key=repr)}
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: _encode(v, where) for k, v in value.items()}}
    if attrs.has(type(value)):
        return encode_component(value)
    raise TypeError(f"cannot store {where} = {value!r} ({type(value).__name__}) as JSON.")


def decode_component(spec: Mapping[str, Any], *, trust_user_classes: bool = False) -> Any:
    """Rebuild an ``attrs`` instance from :func:`encode_component`'s output."""
    path = spec["class"]
    module, _, qualname = str(path).partition(":")
    if not module or not qualname:
        raise ValueError(f"class path {path!r} is not 'module:QualName'.")
    if not _in_moil(module) and not trust_user_classes:
        raise PermissionError(
            f"the student uses the class {path!r} from outside moil; loading imports its module, "
            "which runs its code. If you trust it, pass trust_user_classes=True."
        )
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ValueError(
            f"unknown class {path!r} ({err}); install the package that defines it."
        ) from None
    if not (isinstance(obj, type) and attrs.has(obj)):
        raise ValueError(f"{path!r} is not an attrs class; only attrs components are rebuilt.")
    if not _in_moil(obj.__module__) and not trust_user_classes:
        raise PermissionError(
            f"{path!r} resolves to {obj.__module__}.{obj.__qualname__}, a class from outside "
            "moil; if you trust it, pass trust_user_classes=True."
        )
    fields = {k: _decode(v, trust_user_classes) for k, v in dict(spec["fields"]).items()}
    try:
        return obj(**fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"cannot rebuild {path!r} from fields {spec['fields']}: {err}") from None


def _in_moil(module: str) -> bool:
    return module == "moil" or module.startswith("moil.")


def _decode(value: Any, trust: bool) -> Any:
    if isinstance(value, list):
        return [_decode(v, trust) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tuple__" in value:
        return tuple(_decode(v, trust) for v in value["__tuple__"])
    if "__frozenset__" in value:
        return frozenset(_decode(v, trust) for v in value["__frozenset__"])
    if "__dict__" in value:
        return {k: _decode(v, trust) for k, v in value["__dict__"].items()}
    return decode_component(value, trust_user_classes=trust)
