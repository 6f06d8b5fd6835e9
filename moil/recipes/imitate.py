"""Imitation of a fixed fine-tuned checkpoint: no data, no teacher, no momentum."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from torch import Tensor

from moil.optim import AdamW
from moil.recipes.imitation import Imitation, ImitationState
from moil.recipes.parts import PerBackbone
from moil.recipes.protocol import dense_size, head_size
from moil.recipes.student import Student, as_students
from moil.recipes.task_step import clone, default_optimizer
from moil.solvers import Gradient

__all__ = ["ImitateFixed", "ImitateState"]

ImitateState = ImitationState  # its ``targets`` stay empty: the target is the recipe's own
FIXED = "fixed"


@attrs.frozen
class ImitateFixed:
    r"""Fit students to fixed fine-tuned weights ``T``: ``θ ← solver(θ; imitation(Ŵ(θ), T))``.

    Weight imitation needs no batches; ``step`` ignores its batch. With
    ``solver=SVDFit()``/``ALSFit()`` as ``refit`` and ``final_fit=True`` one
    :meth:`finalize` call is the whole job (post-hoc compression of a full fine-tune).

    Args:
      target: the fine-tuned ``{"<t>.weight", "<t>.bias"}`` of every target layer.
      heads: the fine-tuned head parameters (used for evaluation and export).
      students: an approximation, a :class:`Student`, or ``{name: either}``.
      optimizer: student optimiser.
      solver: default per-step solver.
    """

    target: Mapping[str, Tensor] = attrs.field(converter=clone)
    heads: Mapping[str, Tensor] = attrs.field(converter=clone)
    students: Mapping[str, Student] = attrs.field(converter=as_students)
    optimizer: AdamW = attrs.field(factory=default_optimizer)
    solver: Any = attrs.field(factory=Gradient)
    _parts: PerBackbone = attrs.field(factory=PerBackbone, init=False, eq=False, repr=False)

    @property
    def primary(self) -> str:
        return f"student/{next(iter(self.students))}"

    def imitation(self, backbone: Any) -> Imitation:
        """The students, built once per backbone, all following the fixed target."""
        def build(bb):
            missing = sorted(set(bb.base()) - set(self.target))
            if missing:
                raise KeyError(f"ImitateFixed: target lacks {missing[:3]}; pass every target layer's tensors.")
            return Imitation.build(self.students, bb, momentum=None, optimizer=self.optimizer,
                                   solver=self.solver, target=FIXED)

        return self._parts.get(backbone, build)

    def _given(self, backbone: Any) -> dict[str, dict[str, Tensor]]:
        return {FIXED: {k: self.target[k] for k in backbone.base()}}

    def init(self, backbone: Any, *, seed: int = 0) -> ImitateState:
        return self.imitation(backbone).init({}, backbone.base(), seed=seed)

    def step(self, state: ImitateState, backbone: Any, batch: Any = None) -> tuple[ImitateState, dict]:
        return self.imitation(backbone).follow(state, self._given(backbone), backbone.base())

    def finalize(self, state: ImitateState, backbone: Any) -> ImitateState:
        return self.imitation(backbone).finalize(state, backbone.base(), self._given(backbone))

    def candidates(self, state: ImitateState, backbone: Any) -> dict[str, dict[str, Tensor]]:
        merged = self.imitation(backbone).merged(state, backbone.base())
        out = {f"student/{n}": {**w, **self.heads} for n, w in merged.items()}
        out["target"] = {**self._given(backbone)[FIXED], **self.heads}
        return out

    def students_of(self, state: ImitateState, backbone: Any) -> dict[str, tuple[Any, dict[str, Tensor]]]:
        return self.imitation(backbone).students_of(state)

    def stored_parameters(self, state: ImitateState, backbone: Any) -> dict[str, int]:
        heads = head_size(backbone)
        sizes = self.imitation(backbone).num_stored(backbone.base())
        return {**{f"student/{n}": s + heads for n, s in sizes.items()}, "target": dense_size(backbone) + heads}

    def imitation_targets(self, state: ImitateState, backbone: Any) -> dict[str, dict[str, Tensor]]:
        return self.imitation(backbone).imitated(state, self._given(backbone))
