"""Imitation of a fixed fine-tuned checkpoint: no data, no teacher, no momentum."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import attrs
from torch import Tensor

from moil.optim import AdamState, AdamW
from moil.recipes.base import Student, as_students, check_finite, clone, student_seed
from moil.recipes.moil import default_optimizer
from moil.solvers import Gradient

__all__ = ["ImitateFixed", "ImitateState"]


class ImitateState(NamedTuple):
    step: int
    students: dict[str, dict[str, Tensor]]
    student_opts: dict[str, AdamState]


@attrs.frozen
class ImitateFixed:
    r"""Fit students to fixed fine-tuned weights ``T``: ``θ ← solver(θ; imitation(Ŵ(θ), T))``.

    Weight imitation needs no batches; ``step`` ignores its batch. With
    ``solver=SVDFit()``/``ALSFit()`` as ``refit`` and ``final_fit=True`` one
    :meth:`finalize` call is the whole job (post-hoc compression of a full
    fine-tune).

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

    def _check(self, backbone: Any) -> None:
        base = backbone.base()
        missing = sorted(set(base) - set(self.target))
        if missing:
            raise KeyError(f"ImitateFixed: target lacks {missing[:3]}; pass every target layer's tensors.")

    def _optimizer(self, student: Student) -> AdamW:
        return self.optimizer if student.lr is None else attrs.evolve(self.optimizer, lr=student.lr)

    def init(self, backbone: Any, *, seed: int = 0) -> ImitateState:
        self._check(backbone)
        base, students, opts = backbone.base(), {}, {}
        for name, s in self.students.items():
            students[name] = s.adapter(backbone).init(base, generator=student_seed(seed, name))
            opts[name] = self._optimizer(s).init(students[name])
        return ImitateState(0, students, opts)

    def step(self, state: ImitateState, backbone: Any, batch: Any = None) -> tuple[ImitateState, dict]:
        base, metrics, students, opts = backbone.base(), {}, {}, {}
        target = {k: self.target[k] for k in base}
        for name, s in self.students.items():
            adapter = s.adapter(backbone)
            params, opt, m = (s.solver or self.solver).update(
                adapter, base, state.students[name], state.student_opts[name], self._optimizer(s), target, state.step
            )
            if s.refit_every and (state.step + 1) % s.refit_every == 0:
                params = s.refit.fit(adapter, base, target, params)
            for key, value in m.items():
                check_finite(value, f"student {name!r} {key}", state.step)
                metrics[f"{key}/{name}"] = value
            students[name], opts[name] = params, opt
        return ImitateState(state.step + 1, students, opts), metrics

    def finalize(self, state: ImitateState, backbone: Any) -> ImitateState:
        base, students = backbone.base(), dict(state.students)
        target = {k: self.target[k] for k in base}
        for name, s in self.students.items():
            if s.final_fit:
                students[name] = s.refit.fit(s.adapter(backbone), base, target, students[name])
        return state._replace(students=students)

    def candidates(self, state: ImitateState, backbone: Any) -> dict[str, dict[str, Tensor]]:
        base = backbone.base()
        out = {f"student/{n}": {**a.merge(p, base), **self.heads} for n, (a, p) in self.students_of(state, backbone).items()}
        out["target"] = {**{k: self.target[k] for k in base}, **self.heads}
        return out

    def students_of(self, state: ImitateState, backbone: Any) -> dict[str, tuple[Any, dict[str, Tensor]]]:
        return {n: (s.adapter(backbone), state.students[n]) for n, s in self.students.items()}
