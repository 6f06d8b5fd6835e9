"""The LoRA baseline: the student itself in the forward pass, task loss only."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import attrs
from torch import Tensor

from moil.approx import Adapter, Approximation, LowRank
from moil.optim import AdamW
from moil.precision import forward_precision
from moil.recipes.parts import PerBackbone
from moil.recipes.protocol import head_size
from moil.recipes.student import Student, student_seed
from moil.recipes.task_step import (
    TaskLoss,
    TaskState,
    TaskStep,
    default_optimizer,
    group,
    positive_scale,
)

__all__ = ["LoRA", "LoRAState"]


class LoRAState(TaskState):
    """``params = {"student": adapter params, "heads": …}``."""

    __slots__ = ()
    student = group("student")
    heads = group("heads")
    student_opt = group("student", opt=True)
    head_opt = group("heads", opt=True)


@attrs.frozen
class LoRA:
    r"""Adapter-in-the-forward training (Hu et al., 2021): ``θ, h ← AdamW(∇ task(f(Ŵ(θ), h)))``.

    With ``LowRank(r, scale=α/r)`` this is LoRA; any approximation works (e.g. a Hybrid
    trained directly by the task loss — an ablation of MoIL's imitation). The stored
    adapter equals a MoIL student of the same approximation in size.

    Args:
      task_loss: ``(outputs, batch) -> scalar``.
      approx: the approximation (or a :class:`Student` for a custom sharing rule).
      optimizer: AdamW (reference schedule by default).
      head_lr_scale: head learning rate multiplier.
    """

    task_loss: TaskLoss
    approx: Approximation | Student
    optimizer: AdamW = attrs.field(factory=default_optimizer)
    head_lr_scale: float = attrs.field(default=1.0, validator=positive_scale)
    primary = "student/student"
    task: TaskStep = attrs.field(init=False, eq=False, repr=False)
    _adapters: PerBackbone = attrs.field(factory=PerBackbone, init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        # Built once: the optimisers of the student and of the heads (at a scaled rate).
        task = TaskStep.with_heads(self.task_loss, "student", self.optimizer, self.head_lr_scale)
        object.__setattr__(self, "task", task)

    @property
    def student(self) -> Student:
        return self.approx if isinstance(self.approx, Student) else Student(self.approx)

    def adapter(self, backbone: Any) -> Adapter:
        """The student's adapter over the backbone's targets (built once per backbone)."""
        return self._adapters.get(backbone, self.student.adapter)

    def init(self, backbone: Any, *, seed: int = 0) -> LoRAState:
        params = self.adapter(backbone).init(backbone.base(), generator=student_seed(seed, "student"))
        return LoRAState(*self.task.init({"student": params, "heads": backbone.head_params()}))

    def step(self, state: LoRAState, backbone: Any, batch: Mapping[str, Tensor]) -> tuple[LoRAState, dict]:
        adapter, base = self.adapter(backbone), backbone.base()
        # A LowRank merge is one addmm, safe and 3x cheaper in bf16 (benchmarks/merge_precision.py);
        # others merge in fp32 (a Hybrid's bias is an addmv, which CPU autocast leaves in fp32).
        low_rank = isinstance(adapter.approx, LowRank)

        def forward(tree, b):
            with forward_precision(backbone, base) if low_rank else nullcontext():
                merged = adapter.merge(tree["student"], base)
            return backbone({**merged, **tree["heads"]}, b)

        return self.task.step(state, forward, batch)

    def finalize(self, state: LoRAState, backbone: Any) -> LoRAState:
        return state

    def candidates(self, state: LoRAState, backbone: Any) -> dict[str, dict[str, Tensor]]:
        merged = self.adapter(backbone).merge(state.student, backbone.base())
        return {"student/student": {**merged, **state.heads}}

    def students_of(self, state: LoRAState, backbone: Any) -> dict[str, tuple[Adapter, dict[str, Tensor]]]:
        return {"student": (self.adapter(backbone), state.student)}

    def stored_parameters(self, state: LoRAState, backbone: Any) -> dict[str, int]:
        return {"student/student": self.adapter(backbone).num_params(backbone.base()) + head_size(backbone)}

    def imitation_targets(self, state: LoRAState, backbone: Any) -> dict:
        return {}
