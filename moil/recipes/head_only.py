"""Train only the task heads: the floor every adaptation method must clear."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from torch import Tensor

from moil.optim import AdamW
from moil.recipes.protocol import head_size
from moil.recipes.task_step import TaskLoss, TaskState, TaskStep, default_optimizer, group

__all__ = ["HeadOnly", "HeadOnlyState"]


class HeadOnlyState(TaskState):
    """``params = {"heads": {name: tensor}}``."""

    __slots__ = ()
    heads = group("heads")
    head_opt = group("heads", opt=True)


@attrs.frozen
class HeadOnly:
    r"""``h ← AdamW(∇_h task(f(W0, h)))`` — the backbone stays pre-trained; stores the heads only."""

    task_loss: TaskLoss
    optimizer: AdamW = attrs.field(factory=default_optimizer)
    primary = "heads"

    task: TaskStep = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        # Built once: the optimisers of every group (the heads' scaled).
        object.__setattr__(self, "task", TaskStep(self.task_loss, {"heads": self.optimizer}))

    def init(self, backbone: Any, *, seed: int = 0) -> HeadOnlyState:
        return HeadOnlyState(*self.task.init({"heads": backbone.head_params()}))

    def step(self, state: HeadOnlyState, backbone: Any, batch: Mapping[str, Tensor]) -> tuple[HeadOnlyState, dict]:
        return self.task.step(state, lambda tree, b: backbone(dict(tree["heads"]), b), batch)

    def finalize(self, state: HeadOnlyState, backbone: Any) -> HeadOnlyState:
        return state

    def candidates(self, state: HeadOnlyState, backbone: Any) -> dict[str, dict[str, Tensor]]:
        return {"heads": dict(state.heads)}

    def students_of(self, state: HeadOnlyState, backbone: Any) -> dict:
        return {}

    def stored_parameters(self, state: HeadOnlyState, backbone: Any) -> dict[str, int]:
        return {"heads": head_size(backbone)}

    def imitation_targets(self, state: HeadOnlyState, backbone: Any) -> dict:
        return {}
