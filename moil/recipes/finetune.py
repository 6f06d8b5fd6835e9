"""Full fine-tuning of the target layers (and heads): MoIL's teacher alone."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import attrs
from torch import Tensor

from moil.optim import AdamState, AdamW
from moil.recipes.base import TaskLoss, check_finite, clone, head_optimizer, task_gradients
from moil.recipes.moil import default_optimizer

__all__ = ["FullFineTune", "FineTuneState"]


class FineTuneState(NamedTuple):
    step: int
    teacher: dict[str, Tensor]
    heads: dict[str, Tensor]
    teacher_opt: AdamState
    head_opt: AdamState


@attrs.frozen
class FullFineTune:
    r"""``(W, h) ← AdamW(∇ task(f(W, h)))`` over the full-rank target weights.

    The upper reference every low-rank method is measured against; it stores a
    dense copy of every target. Its final weights can be imitated afterwards
    with :class:`~moil.recipes.ImitateFixed`.
    """

    task_loss: TaskLoss
    optimizer: AdamW = attrs.field(factory=default_optimizer)
    head_lr_scale: float = 1.0

    def init(self, backbone: Any, *, seed: int = 0) -> FineTuneState:
        teacher, heads = clone(backbone.base()), backbone.head_params()
        return FineTuneState(
            0, teacher, heads, self.optimizer.init(teacher),
            head_optimizer(self.optimizer, self.head_lr_scale).init(heads),
        )

    def step(self, state: FineTuneState, backbone: Any, batch: Mapping[str, Tensor]) -> tuple[FineTuneState, dict]:
        grads, loss, _ = task_gradients(
            backbone, self.task_loss, {"teacher": state.teacher, "heads": state.heads},
            lambda tree: {**tree["teacher"], **tree["heads"]}, batch,
        )
        metrics = {"task_loss": check_finite(loss, "task loss", state.step)}
        teacher, teacher_opt = self.optimizer.update(grads["teacher"], state.teacher_opt, state.teacher)
        heads, head_opt = head_optimizer(self.optimizer, self.head_lr_scale).update(
            grads["heads"], state.head_opt, state.heads
        )
        metrics["lr"] = self.optimizer.learning_rate(state.step)
        return FineTuneState(state.step + 1, teacher, heads, teacher_opt, head_opt), metrics

    def finalize(self, state: FineTuneState, backbone: Any) -> FineTuneState:
        return state

    def candidates(self, state: FineTuneState, backbone: Any) -> dict[str, dict[str, Tensor]]:
        return {"teacher": {**state.teacher, **state.heads}}

    def students_of(self, state: FineTuneState, backbone: Any) -> dict:
        return {}
