"""Full fine-tuning of the target layers (and heads): MoIL's teacher alone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from torch import Tensor

from moil.optim import AdamW
from moil.recipes.protocol import dense_size, head_size
from moil.recipes.task_step import (
    TaskLoss,
    TaskState,
    TaskStep,
    clone,
    default_optimizer,
    group,
    positive_scale,
)

__all__ = ["FineTuneState", "FullFineTune"]


class FineTuneState(TaskState):
    """``params = {"teacher": {"<t>.weight" (out, in), "<t>.bias" (out,)}, "heads": …}``."""

    __slots__ = ()
    teacher = group("teacher")
    heads = group("heads")
    teacher_opt = group("teacher", opt=True)
    head_opt = group("heads", opt=True)


@attrs.frozen
class FullFineTune:
    r"""``(W, h) ← AdamW(∇ task(f(W, h)))`` over the full-rank target weights — MoIL without students.

    The upper reference every low-rank method is measured against; it stores a dense
    copy of every target. Its final weights can be imitated afterwards with
    :class:`~moil.recipes.ImitateFixed`.

    Args:
      task_loss: ``(outputs, batch) -> scalar``.
      optimizer: AdamW of the teacher (reference: :func:`default_optimizer`).
      head_lr_scale: the heads' learning rate = ``head_lr_scale`` × the teacher's.
    """

    task_loss: TaskLoss
    optimizer: AdamW = attrs.field(factory=default_optimizer)
    head_lr_scale: float = attrs.field(default=1.0, validator=positive_scale)
    primary = "teacher"

    task: TaskStep = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        # Built once: the optimisers of the teacher and of the heads (at a scaled rate).
        task = TaskStep.with_heads(self.task_loss, "teacher", self.optimizer, self.head_lr_scale)
        object.__setattr__(self, "task", task)

    def init(self, backbone: Any, *, seed: int = 0) -> FineTuneState:
        """Teacher = a copy of ``W0``; heads as the model has them."""
        return FineTuneState(*self.task.init({"teacher": clone(backbone.base()), "heads": backbone.head_params()}))

    @staticmethod
    def forward(backbone: Any) -> Any:
        """``f(θ, batch) = backbone(teacher ∪ heads, batch)``."""
        return lambda tree, batch: backbone({**tree["teacher"], **tree["heads"]}, batch)

    def gradients(self, state: FineTuneState, backbone: Any, batch: Mapping[str, Tensor]):
        """Step 1 of MoIL: the task gradients of teacher and heads, and the step's metrics."""
        return self.task.gradients(state, self.forward(backbone), batch)

    def apply(self, state: FineTuneState, grads) -> FineTuneState:
        """Step 4 of MoIL: AdamW on teacher and heads."""
        return self.task.apply(state, grads)

    def step(self, state: FineTuneState, backbone: Any, batch: Mapping[str, Tensor]) -> tuple[FineTuneState, dict]:
        return self.task.step(state, self.forward(backbone), batch)

    def finalize(self, state: FineTuneState, backbone: Any) -> FineTuneState:
        return state

    def candidates(self, state: FineTuneState, backbone: Any) -> dict[str, dict[str, Tensor]]:
        return {"teacher": {**state.teacher, **state.heads}}

    def students_of(self, state: FineTuneState, backbone: Any) -> dict:
        return {}

    def stored_parameters(self, state: FineTuneState, backbone: Any) -> dict[str, int]:
        return {"teacher": dense_size(backbone) + head_size(backbone)}

    def imitation_targets(self, state: FineTuneState, backbone: Any) -> dict:
        return {}
