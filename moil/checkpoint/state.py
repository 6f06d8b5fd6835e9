"""A recipe's state ⇄ ``(tensors, scalars)``: the one codec for nested state.

A state is a tree of mappings and NamedTuples whose leaves are tensors, bools,
ints and floats. :func:`split_state` flattens it to ``"/"``-joined keys; the
tensors go into a checkpoint file, the scalars into its JSON metadata.
:func:`restore_state` fills a *template* (a freshly ``init``-ed state of the same
recipe and backbone) from those, checking every key, shape, dtype and type.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Union

from torch import Tensor

from moil.checkpoint.errors import CheckpointMismatchError
from moil.checkpoint.files import KEY_SEP
from moil.checkpoint.match import _problems

__all__ = ["Scalar", "restore_state", "split_state"]

#: A state's numbers: stored as JSON in the metadata, exactly (bool, int, float incl. nan).
Scalar = Union[bool, int, float]


def _children(node: Any) -> dict[Any, Any]:
    # A NamedTuple (an optimiser's state, a recipe's) by field; a mapping by key.
    return dict(zip(node._fields, node)) if _is_namedtuple(node) else dict(node)


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def split_state(state: Any, *, prefix: str = "") -> tuple[dict[str, Tensor], dict[str, Scalar]]:
    """A state → ``(tensors, scalars)``, keys joined by ``"/"``; inverse of :func:`restore_state`.

    A state is a tree of mappings and NamedTuples whose leaves are tensors (not
    copied), bools, ints and floats: ``{"a": {"b": t, "step": 3}}`` →
    ``({"a/b": t}, {"a/step": 3})``. Key segments may contain ``"."`` and ``"::"``;
    an empty mapping has no key to store and is restored from the template.

    Raises:
      ValueError: a key is not a non-empty string without ``"/"``.
      TypeError: a leaf is none of the above (store a generator as ``get_state()``).
    """
    if not (_is_namedtuple(state) or isinstance(state, Mapping)):
        raise TypeError(
            f"split_state: expected a mapping or NamedTuple, got {type(state).__name__}."
        )
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, Scalar] = {}
    for name, child in _children(state).items():
        if not isinstance(name, str) or not name or KEY_SEP in name:
            raise ValueError(
                f"split_state: key {name!r} under {prefix.rstrip(KEY_SEP) or '<root>'!r} must be a "
                f"non-empty string without {KEY_SEP!r} (the separator of flat checkpoint keys); "
                "rename it."
            )
        key = f"{prefix}{name}"
        if isinstance(child, Tensor):
            tensors[key] = child
        elif isinstance(child, (bool, int, float)):
            scalars[key] = child
        elif _is_namedtuple(child) or isinstance(child, Mapping):
            more_tensors, more_scalars = split_state(child, prefix=key + KEY_SEP)
            tensors.update(more_tensors)
            scalars.update(more_scalars)
        else:
            raise TypeError(
                f"split_state: leaf {key!r} is a {type(child).__name__}; a state holds tensors, "
                "bools, ints and floats (store a torch.Generator as generator.get_state())."
            )
    return tensors, scalars


def restore_state(template: Any, tensors: Mapping[str, Tensor], scalars: Mapping[str, Any]) -> Any:
    """``template``'s structure with every leaf from ``tensors`` / ``scalars``.

    ``restore_state(t, *split_state(s)) == s`` for any ``t`` of ``s``'s structure.
    Tensors move to the template leaf's device (the same tensor when already
    there); scalars take the template's type (after :func:`split_state`'s JSON trip
    an int is an int, a float a float — nan and -0.0 included).

    A NamedTuple state may name fields in ``UPCAST_FIELDS`` whose tensors may be stored in
    a narrower dtype than the template's, restored by an exact upcast
    (:data:`~moil.checkpoint.match.EXACT_UPCASTS`): a bf16 teacher's momentum target,
    written in bf16 before targets were kept in float32.

    Raises:
      CheckpointMismatchError: keys differ, or a tensor's shape / dtype or a scalar's
        type differs from the template's.
    """
    want_t, want_s = split_state(template)
    problems = _problems(tensors, want_t, upcast=_upcast_keys(template)) + _problems(scalars, want_s)
    if problems:
        raise CheckpointMismatchError(
            "checkpoint does not match this recipe/backbone: " + "; ".join(problems[:5])
            + ". Resume with the configuration and model (the same pretrained weights and shapes) that "
            "wrote it, or start a new run directory."
        )
    return _fill(template, tensors, scalars, "")


def _fill(node: Any, tensors: Mapping[str, Tensor], scalars: Mapping[str, Any], prefix: str) -> Any:
    out = {}
    for name, child in _children(node).items():
        key = f"{prefix}{name}"
        if isinstance(child, Tensor):  # same dtype: a no-op; an allowed exact upcast otherwise
            out[name] = tensors[key].to(device=child.device, dtype=child.dtype)
        elif isinstance(child, (bool, int, float)):
            out[name] = type(child)(scalars[key])
        else:
            out[name] = _fill(child, tensors, scalars, key + KEY_SEP)
    return type(node)(**out) if _is_namedtuple(node) else out


def _upcast_keys(node: Any, prefix: str = "", upcast: bool = False) -> frozenset[str]:
    """The flat tensor keys under a NamedTuple field named in its ``UPCAST_FIELDS``."""
    keys: set[str] = set()
    allowed = getattr(type(node), "UPCAST_FIELDS", ()) if _is_namedtuple(node) else ()
    for name, child in _children(node).items():
        key, below = f"{prefix}{name}", upcast or name in allowed
        if isinstance(child, Tensor) and below:
            keys.add(key)
        elif _is_namedtuple(child) or isinstance(child, Mapping):
            keys |= _upcast_keys(child, key + KEY_SEP, below)
    return frozenset(keys)
