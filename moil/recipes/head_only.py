"""Train only the task heads: the floor every adaptation method must clear."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import attrs
from torch import Tensor

from moil.optim import AdamState, AdamW
from moil.recipes.base import TaskLoss, check_finite, task_gradients
from moil.recipes.moil import default_optimizer

__all__ = ["HeadOnly", "HeadOnlyState"]


class HeadOnlyState(NamedTuple):
    step: int
    heads: dict[str, Tensor]
    head_opt: AdamState


@attrs.frozen
class HeadOnly:
    r"""``h ← AdamW(∇_h task(f(W0, h)))`` — the backbone stays pre-trained; stores the heads only."""

    task_loss: TaskLoss
    optimizer: AdamW = attrs.field(factory=default_optimizer)

    def init(self, backbone: Any, *, seed: int = 0) -> HeadOnlyState:
        heads = backbone.head_params()
        return HeadOnlyState(0, heads, self.optimizer.init(heads))

    def step(self, state: HeadOnlyState, backbone: Any, batch: Mapping[str, Tensor]) -> tuple[HeadOnlyState, dict]:
        grads, loss, _ = task_gradients(
            backbone, self.task_loss, {"heads": state.heads}, lambda tree: dict(tree["heads"]), batch
        )
        metrics = {"task_loss": check_finite(loss, "task loss", state.step)}
        heads, head_opt = self.optimizer.update(grads["heads"], state.head_opt, state.heads)
        metrics["lr"] = self.optimizer.learning_rate(state.step)
        return HeadOnlyState(state.step + 1, heads, head_opt), metrics

    def finalize(self, state: HeadOnlyState, backbone: Any) -> HeadOnlyState:
        return state

    def candidates(self, state: HeadOnlyState, backbone: Any) -> dict[str, dict[str, Tensor]]:
        return {"heads": dict(state.heads)}

    def students_of(self, state: HeadOnlyState, backbone: Any) -> dict:
        return {}
