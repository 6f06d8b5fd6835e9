"""The recipe protocol: what every training recipe offers, stated once.

A *recipe* is an immutable component (configuration only) with pure methods over an
explicit state — a NamedTuple tree of tensors, ints and floats, so
:func:`moil.checkpoint` can save and restore any recipe's state exactly::

    init(backbone, *, seed=0)          -> state
    step(state, backbone, batch)       -> (state, metrics)        metrics: {name: float}
    finalize(state, backbone)          -> state                   end-of-training fits
    candidates(state, backbone)        -> {name: overrides}       parameter sets to evaluate
    students_of(state, backbone)       -> {name: (Adapter, params)}  the stored students
    primary                            -> str                     the candidate it is judged by
    stored_parameters(state, backbone) -> {candidate: int}        numbers stored per candidate
    imitation_targets(state, backbone) -> {student: tensors}      what each student imitates

``overrides`` are the tensors handed to ``backbone(params, batch)``: effective target
weights/biases ``"<t>.weight"`` ``(out, in)`` / ``"<t>.bias"`` ``(out,)`` and the heads.
Stored sizes count every number a candidate needs beyond the pre-trained model, heads
included. A recipe whose schedules span the run (``total_steps=None``) is bound to a run
length by :func:`moil.schedules.bind_run` (``moil.train.train`` does it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from moil.approx import Adapter

__all__ = ["Recipe", "dense_size", "head_size"]


@runtime_checkable
class Recipe(Protocol):
    primary: str

    def init(self, backbone: Any, *, seed: int = 0) -> Any: ...

    def step(self, state: Any, backbone: Any, batch: Mapping[str, Tensor]) -> tuple[Any, dict]: ...

    def finalize(self, state: Any, backbone: Any) -> Any: ...

    def candidates(self, state: Any, backbone: Any) -> dict[str, dict[str, Tensor]]: ...

    def students_of(self, state: Any, backbone: Any) -> dict[str, tuple[Adapter, dict[str, Tensor]]]: ...

    def stored_parameters(self, state: Any, backbone: Any) -> dict[str, int]: ...

    def imitation_targets(self, state: Any, backbone: Any) -> dict[str, dict[str, Tensor]]: ...


def head_size(backbone: Any) -> int:
    """Numbers in the heads (stored by every candidate)."""
    return sum(v.numel() for v in backbone.head_params().values())


def dense_size(backbone: Any) -> int:
    """Numbers in the dense target tensors (a teacher or target stores all of them)."""
    return sum(v.numel() for v in backbone.base().values())
