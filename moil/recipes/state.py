"""Recipe states ⇄ flat tensors + scalars, for exact checkpoints.

A state is a tree of NamedTuples and dicts whose leaves are tensors, ints or
floats. :func:`split` flattens it to ``({"a/b/c": Tensor}, {"a/step": int})``;
:func:`restore` fills a *template* (a freshly ``init``-ed state of the same
recipe and backbone) from those, checking every key, shape and dtype, so a
checkpoint from another configuration is refused instead of half-loaded.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

__all__ = ["split", "restore"]


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def _children(node: Any) -> dict[str, Any]:
    if _is_namedtuple(node):
        return dict(zip(node._fields, node))
    return dict(node)


def split(state: Any, prefix: str = "") -> tuple[dict[str, Tensor], dict[str, int | float]]:
    """``state`` → (tensors, scalars), keys joined with ``/``."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, int | float] = {}
    for name, child in _children(state).items():
        if "/" in str(name):
            raise ValueError(f"state key {name!r} contains '/', which separates checkpoint keys.")
        key = f"{prefix}{name}"
        if isinstance(child, Tensor):
            tensors[key] = child
        elif isinstance(child, (bool, int, float)):
            scalars[key] = child
        elif _is_namedtuple(child) or isinstance(child, Mapping):
            t, s = split(child, key + "/")
            tensors.update(t)
            scalars.update(s)
        else:
            raise TypeError(f"state leaf {key!r} has type {type(child).__name__}; states hold tensors, ints, floats.")
    return tensors, scalars


def restore(template: Any, tensors: Mapping[str, Tensor], scalars: Mapping[str, int | float]) -> Any:
    """The template's structure, with every leaf taken from ``tensors``/``scalars``."""
    want_t, want_s = split(template)
    problems = []
    if set(want_t) != set(tensors):
        missing, extra = sorted(set(want_t) - set(tensors)), sorted(set(tensors) - set(want_t))
        problems.append(f"tensor keys differ (missing {missing[:3]}, unexpected {extra[:3]})")
    if set(want_s) != set(scalars):
        problems.append(f"scalar keys differ: expected {sorted(want_s)[:5]}, got {sorted(scalars)[:5]}")
    for key in set(want_t) & set(tensors):
        if want_t[key].shape != tensors[key].shape or want_t[key].dtype != tensors[key].dtype:
            problems.append(
                f"{key}: checkpoint has {tuple(tensors[key].shape)} {tensors[key].dtype}, run "
                f"expects {tuple(want_t[key].shape)} {want_t[key].dtype}"
            )
    if problems:
        raise ValueError(
            "checkpoint does not match this recipe/backbone: " + "; ".join(problems[:4])
            + ". Resume with the configuration that wrote it, or start a new run directory."
        )
    return _fill(template, tensors, scalars, "")


def _fill(node: Any, tensors: Mapping[str, Tensor], scalars: Mapping[str, Any], prefix: str) -> Any:
    out = {}
    for name, child in _children(node).items():
        key = f"{prefix}{name}"
        if isinstance(child, Tensor):
            out[name] = tensors[key].to(child.device)
        elif isinstance(child, (bool, int, float)):
            out[name] = type(child)(scalars[key])
        else:
            out[name] = _fill(child, tensors, scalars, key + "/")
    return type(node)(**out) if _is_namedtuple(node) else out
