"""Does a checkpoint fit a template? Keys, shapes, dtypes (tensors) and kinds (scalars)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from moil.checkpoint.errors import CheckpointMismatchError

__all__ = ["EXACT_UPCASTS", "check_matches"]


def check_matches(
    tensors: Mapping[str, Tensor],
    expected: Mapping[str, Tensor],
    *,
    source: str,
    dtypes: bool = True,
) -> None:
    """Raise :class:`CheckpointMismatchError` unless keys, shapes (and ``dtypes``) agree."""
    problems = _problems(tensors, expected, dtypes)
    if problems:
        raise CheckpointMismatchError(
            f"{source}: checkpoint made for another model/config: "
            + "; ".join(problems)
            + ". Load it with the model, approximation and ranks it was saved with."
        )


def _kind(x: Any) -> type:
    # JSON gives back bool / int / float; a template's numpy float is a float.
    return next((k for k in (bool, int, float) if isinstance(x, k)), type(x))


#: Stored → template dtypes restored exactly by an upcast (every value is representable).
EXACT_UPCASTS = frozenset({(torch.bfloat16, torch.float32), (torch.float16, torch.float32)})


def _problems(got: Mapping[str, Any], want: Mapping[str, Any], dtypes: bool = True,
              upcast: frozenset[str] = frozenset()) -> list[str]:
    """At most five differences of keys, then shapes / dtypes (tensors) or types (scalars);
    a key in ``upcast`` may hold a narrower dtype that :data:`EXACT_UPCASTS` widens exactly."""
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    problems = []
    if missing:
        problems.append(f"{len(missing)} key(s) missing from the checkpoint, e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
    for key in sorted(set(want) & set(got)):
        g, w = got[key], want[key]
        if not isinstance(w, Tensor):
            if _kind(g) is not _kind(w):
                problems.append(f"{key!r} is {g!r}, expected a {_kind(w).__name__}")
        elif tuple(g.shape) != tuple(w.shape):
            problems.append(f"{key!r} has shape {tuple(g.shape)}, expected {tuple(w.shape)}")
        elif dtypes and g.dtype != w.dtype and not (key in upcast and (g.dtype, w.dtype) in EXACT_UPCASTS):
            problems.append(f"{key!r} has dtype {g.dtype}, expected {w.dtype}")
        if len(problems) >= 5:
            break
    return problems
