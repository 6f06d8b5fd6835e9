"""The MoIL recipe: teacher forward, momentum target, student imitation."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import attrs
from torch import Tensor

from moil.momentum import REFERENCE_MOMENTUM, MomentumState, MomentumTarget
from moil.optim import AdamState, AdamW, WarmupLinearDecay
from moil.recipes.base import (
    Student,
    TaskLoss,
    as_students,
    check_finite,
    clone,
    head_optimizer,
    student_seed,
    task_gradients,
)
from moil.solvers import Gradient

__all__ = ["MoIL", "MoILState"]


class MoILState(NamedTuple):
    """Everything a MoIL run changes; tensors in dicts keyed by parameter name.

    ``teacher``: full-rank target weights/biases ``{"<t>.weight" (out, in), "<t>.bias" (out,)}``;
    ``heads``: task-head parameters; ``targets``: one momentum state per distinct
    schedule, keyed ``"m0"``, ``"m1"``…; ``students``: adapter params per student name.
    """

    step: int
    teacher: dict[str, Tensor]
    heads: dict[str, Tensor]
    teacher_opt: AdamState
    head_opt: AdamState
    targets: dict[str, MomentumState]
    students: dict[str, dict[str, Tensor]]
    student_opts: dict[str, AdamState]


def default_optimizer(lr: float = 1e-4, total_steps: int = 1000) -> AdamW:
    """MoIL's reference optimiser: AdamW(β=(0.9, 0.98), λ=0.01), 10 % warm-up, linear decay."""
    return AdamW(lr=WarmupLinearDecay(lr, total_steps, 0.1), betas=(0.9, 0.98), weight_decay=0.01)


@attrs.frozen
class MoIL:
    r"""Momentum imitation learning (Luo et al., TPAMI 2025).

    Each step, with teacher ``W`` (initialised to ``W0``), heads ``h``, momentum
    target ``W̄`` and student ``θ`` per student:

    1. ``g = ∇_{W,h} task_loss(f(W, h; batch))`` — the teacher is in the forward;
    2. ``W̄ ← m_t W̄ + (1 − m_t) W`` (no gradient);
    3. ``θ ← solver(θ; imitation(Ŵ(θ), W̄))`` — the student never sees data;
    4. ``(W, h) ← AdamW(g)``.

    Students do not influence the teacher, so any number train in one run
    (``students={"r8": Hybrid(8), "r16": Student(LowRank(16), momentum=HalfLife(50))}``)
    and each ends exactly as in a run of its own.

    Args:
      task_loss: ``(outputs, batch) -> scalar`` (see :mod:`moil.objectives`).
      students: an approximation, a :class:`Student`, or ``{name: either}``.
      momentum: default schedule ``step -> m`` (reference 0.9996 — its half-life
        is ≈1733 steps; for short runs use ``HalfLife(run_length / 10)`` or so).
      optimizer: teacher optimiser (reference AdamW, see :func:`default_optimizer`).
      head_lr_scale: head learning rate = ``head_lr_scale`` × teacher's.
      student_optimizer: student optimiser (default: the teacher's).
      solver: default per-step imitation solver (reference ``Gradient(steps=1)``).
    """

    task_loss: TaskLoss
    students: Mapping[str, Student] = attrs.field(converter=as_students)
    momentum: Any = REFERENCE_MOMENTUM
    optimizer: AdamW = attrs.field(factory=default_optimizer)
    head_lr_scale: float = 1.0
    student_optimizer: AdamW | None = None
    solver: Any = attrs.field(factory=Gradient)

    # -- components per student -----------------------------------------------
    def _schedules(self) -> dict[str, Any]:
        """Distinct momentum schedules → target names ``m0, m1, …`` (in student order)."""
        names: dict[Any, str] = {}
        for s in self.students.values():
            sched = self.momentum if s.momentum is None else s.momentum
            names.setdefault(sched, f"m{len(names)}")
        return {name: sched for sched, name in names.items()}

    def _target_of(self, student: Student) -> str:
        sched = self.momentum if student.momentum is None else student.momentum
        return {v: k for k, v in self._schedules().items()}[sched]

    def _student_optimizer(self, student: Student) -> AdamW:
        opt = self.student_optimizer or self.optimizer
        return opt if student.lr is None else attrs.evolve(opt, lr=student.lr)

    def _head_optimizer(self) -> AdamW:
        return head_optimizer(self.optimizer, self.head_lr_scale)

    # -- the recipe protocol ---------------------------------------------------
    def init(self, backbone: Any, *, seed: int = 0) -> MoILState:
        """Teacher = W0 (fp32 master copy), targets = W0, fresh students."""
        base = backbone.base()
        teacher = clone(base)
        heads = backbone.head_params()
        students, opts = {}, {}
        for name, s in self.students.items():
            adapter = s.adapter(backbone)
            params = adapter.init(base, generator=student_seed(seed, name))
            merged = adapter.merge(params, base)
            if set(merged) != set(teacher):
                extra = sorted(set(merged) - set(teacher))
                raise ValueError(
                    f"student {name!r}: {type(s.approx).__name__} adds parameters the layers "
                    f"lack ({extra[:3]}); targets without a bias need an approximation that "
                    "adds none (LowRank) or a model with biases."
                )
            students[name] = params
            opts[name] = self._student_optimizer(s).init(params)
        targets = {name: MomentumTarget(sched).init(teacher) for name, sched in self._schedules().items()}
        return MoILState(
            0, teacher, heads, self.optimizer.init(teacher), self._head_optimizer().init(heads),
            targets, students, opts,
        )

    def step(self, state: MoILState, backbone: Any, batch: Mapping[str, Tensor]) -> tuple[MoILState, dict]:
        grads, loss, _ = task_gradients(
            backbone, self.task_loss, {"teacher": state.teacher, "heads": state.heads},
            lambda tree: {**tree["teacher"], **tree["heads"]}, batch,
        )
        metrics: dict[str, float] = {"task_loss": check_finite(loss, "task loss", state.step)}
        targets = {}
        for name, sched in self._schedules().items():
            metrics[f"momentum/{name}"] = MomentumTarget(sched).momentum(state.targets[name])
            targets[name] = MomentumTarget(sched).update(state.targets[name], state.teacher)
        base = backbone.base()
        students, opts = {}, {}
        for name, s in self.students.items():
            adapter, target = s.adapter(backbone), targets[self._target_of(s)].target
            params, opt, m = (s.solver or self.solver).update(
                adapter, base, state.students[name], state.student_opts[name],
                self._student_optimizer(s), target, state.step,
            )
            if s.refit_every and (state.step + 1) % s.refit_every == 0:
                params = s.refit.fit(adapter, base, target, params)
            for key, value in m.items():
                check_finite(value, f"student {name!r} {key}", state.step)
            students[name], opts[name] = params, opt
            metrics.update({f"{k}/{name}": v for k, v in m.items()})
        teacher, teacher_opt = self.optimizer.update(grads["teacher"], state.teacher_opt, state.teacher)
        heads, head_opt = self._head_optimizer().update(grads["heads"], state.head_opt, state.heads)
        metrics["lr"] = self.optimizer.learning_rate(state.step)
        return MoILState(state.step + 1, teacher, heads, teacher_opt, head_opt, targets, students, opts), metrics

    def finalize(self, state: MoILState, backbone: Any) -> MoILState:
        """Apply each student's closed-form ``refit`` once if ``final_fit``."""
        base, students = backbone.base(), dict(state.students)
        for name, s in self.students.items():
            if s.final_fit:
                target = state.targets[self._target_of(s)].target
                students[name] = s.refit.fit(s.adapter(backbone), base, target, students[name])
        return state._replace(students=students)

    def candidates(self, state: MoILState, backbone: Any) -> dict[str, dict[str, Tensor]]:
        """``student/<name>`` (merged), ``teacher`` and ``target/<m>`` — the reference reports all."""
        out = {f"student/{n}": {**a.merge(p, backbone.base()), **state.heads}
               for n, (a, p) in self.students_of(state, backbone).items()}
        out["teacher"] = {**state.teacher, **state.heads}
        for name, t in state.targets.items():
            out[f"target/{name}"] = {**t.target, **state.heads}
        return out

    def students_of(self, state: MoILState, backbone: Any) -> dict[str, tuple[Any, dict[str, Tensor]]]:
        return {n: (s.adapter(backbone), state.students[n]) for n, s in self.students.items()}

