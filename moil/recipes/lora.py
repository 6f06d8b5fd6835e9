"""The LoRA baseline: the student itself in the forward pass, task loss only."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import attrs
from torch import Tensor

from moil.approx import Approximation
from moil.optim import AdamState, AdamW
from moil.recipes.base import (
    Student,
    TaskLoss,
    check_finite,
    head_optimizer,
    student_seed,
    task_gradients,
)
from moil.recipes.moil import default_optimizer

__all__ = ["LoRA", "LoRAState"]


class LoRAState(NamedTuple):
    step: int
    student: dict[str, Tensor]
    heads: dict[str, Tensor]
    student_opt: AdamState
    head_opt: AdamState


@attrs.frozen
class LoRA:
    r"""Adapter-in-the-forward training (Hu et al., 2021): ``θ, h ← AdamW(∇ task(f(Ŵ(θ), h)))``.

    With ``LowRank(r, scale=α/r)`` this is LoRA; any approximation works (e.g. a
    Hybrid trained directly by the task loss — an ablation of MoIL's imitation).
    The stored adapter equals a MoIL student of the same approximation in size.

    Args:
      task_loss: ``(outputs, batch) -> scalar``.
      approx: the approximation (or a :class:`Student` for a custom sharing rule).
      optimizer: AdamW (reference schedule by default).
      head_lr_scale: head learning rate multiplier.
    """

    task_loss: TaskLoss
    approx: Approximation | Student
    optimizer: AdamW = attrs.field(factory=default_optimizer)
    head_lr_scale: float = 1.0

    @property
    def student(self) -> Student:
        return self.approx if isinstance(self.approx, Student) else Student(self.approx)

    def init(self, backbone: Any, *, seed: int = 0) -> LoRAState:
        params = self.student.adapter(backbone).init(backbone.base(), generator=student_seed(seed, "student"))
        heads = backbone.head_params()
        return LoRAState(
            0, params, heads, self.optimizer.init(params),
            head_optimizer(self.optimizer, self.head_lr_scale).init(heads),
        )

    def step(self, state: LoRAState, backbone: Any, batch: Mapping[str, Tensor]) -> tuple[LoRAState, dict]:
        adapter, base = self.student.adapter(backbone), backbone.base()
        grads, loss, _ = task_gradients(
            backbone, self.task_loss, {"student": state.student, "heads": state.heads},
            lambda tree: {**adapter.merge(tree["student"], base), **tree["heads"]}, batch,
        )
        metrics = {"task_loss": check_finite(loss, "task loss", state.step)}
        student, student_opt = self.optimizer.update(grads["student"], state.student_opt, state.student)
        heads, head_opt = head_optimizer(self.optimizer, self.head_lr_scale).update(
            grads["heads"], state.head_opt, state.heads
        )
        metrics["lr"] = self.optimizer.learning_rate(state.step)
        return LoRAState(state.step + 1, student, heads, student_opt, head_opt), metrics

    def finalize(self, state: LoRAState, backbone: Any) -> LoRAState:
        return state

    def candidates(self, state: LoRAState, backbone: Any) -> dict[str, dict[str, Tensor]]:
        merged = self.student.adapter(backbone).merge(state.student, backbone.base())
        return {"student/student": {**merged, **state.heads}}

    def students_of(self, state: LoRAState, backbone: Any) -> dict[str, tuple[Any, dict[str, Tensor]]]:
        return {"student": (self.student.adapter(backbone), state.student)}
