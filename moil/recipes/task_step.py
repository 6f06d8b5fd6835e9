"""The task step every recipe shares: the gradient of the task loss through whatever is
in the forward, then one AdamW step per trained group.

With trained groups ``θ = {g: θ_g}`` (e.g. ``teacher`` and ``heads``, or ``student``
and ``heads``) and a forward ``f(θ, batch) -> outputs``:

    ``G = ∇_θ L(f(θ, batch), batch)``,   ``θ_g ← AdamW_g(θ_g, G_g)``  for every ``g``.

:meth:`TaskStep.gradients` and :meth:`TaskStep.apply` are the two halves, so MoIL can
put its imitation between them; :meth:`TaskStep.step` is both.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import attrs
import torch
from torch import Tensor

from moil.autodiff import leaf_gradients
from moil.distributed.gradients import all_reduce_mean, check_mean_loss
from moil.distributed.world import current
from moil.optim import AdamState, AdamW
from moil.schedules import Constant, Scaled, WarmupLinearDecay

__all__ = [
    "Forward",
    "TaskLoss",
    "TaskState",
    "TaskStep",
    "check_finite",
    "check_all_finite",
    "clone",
    "default_optimizer",
    "group",
    "head_optimizer",
    "positive_scale",
]

TaskLoss = Callable[[Mapping[str, Tensor], Mapping[str, Tensor]], Tensor]
#: ``forward(θ, batch) -> outputs`` with ``θ = {group: {name: tensor}}``.
Forward = Callable[[dict[str, dict[str, Tensor]], Mapping[str, Tensor]], dict[str, Tensor]]


class TaskState(NamedTuple):
    """``step`` updates done; ``params`` ``{group: {name: tensor}}``; ``opts`` ``{group: AdamState}``."""

    step: int
    params: dict[str, dict[str, Tensor]]
    opts: dict[str, AdamState]


def group(name: str, opt: bool = False) -> property:
    """A read-only view ``state.<name>`` of one trained group (or its optimiser state)."""
    if opt:
        return property(lambda self: self.opts[name], doc=f"AdamW state of the {name!r} group.")
    return property(lambda self: self.params[name], doc=f"The {name!r} group's tensors.")


def default_optimizer(lr: float = 1e-4, total_steps: int | None = None) -> AdamW:
    """MoIL's reference optimiser: AdamW(β=(0.9, 0.98), λ=0.01), 10 % warm-up, linear decay
    to 0 at ``total_steps`` (``None``: at the end of the run, bound by ``moil.train.train``)."""
    return AdamW(lr=WarmupLinearDecay(lr, total_steps, 0.1), betas=(0.9, 0.98), weight_decay=0.01)


def head_optimizer(optimizer: AdamW, scale: float) -> AdamW:
    """The optimiser with its learning rate multiplied by ``scale`` (heads often learn faster)."""
    if scale == 1.0:
        return optimizer
    lr = optimizer.lr if callable(optimizer.lr) else Constant(optimizer.lr)
    return attrs.evolve(optimizer, lr=Scaled(lr, scale))


def positive_scale(instance, attribute, value) -> None:
    """attrs validator: a learning-rate multiplier is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{type(instance).__name__}: {attribute.name} must be a finite number > 0, got "
            f"{attribute.name}={value!r}; e.g. {attribute.name}=10 for heads at 10× the rate."
        )


def check_finite(value: Tensor | float, what: str, step: int) -> float:
    """Return ``float(value)`` or raise if it is NaN/inf (before any state changes)."""
    v = float(value.detach()) if isinstance(value, Tensor) else float(value)
    if not math.isfinite(v):
        raise FloatingPointError(
            f"{what} is {v} at step {step}; the state was not updated. Lower the learning "
            "rate, check the batch for NaN/inf inputs, or use fp32 instead of fp16."
        )
    return v


def check_all_finite(values: Mapping[str, Tensor | float], step: int) -> dict[str, float]:
    """``{name: float}`` of ``values`` read in one host transfer; raises as :func:`check_finite`
    naming the first NaN/inf one (one synchronisation per step on CUDA, not one per value)."""
    tensors = [v.detach().reshape(()) for v in values.values() if isinstance(v, Tensor)]
    read = iter([])
    if tensors:
        dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
        read = iter(torch.stack([t.to(tensors[0].device, dtype) for t in tensors]).tolist())
    out = {k: (next(read) if isinstance(v, Tensor) else float(v)) for k, v in values.items()}
    for name, v in out.items():
        check_finite(v, name, step)
    return out


def clone(tensors: Mapping[str, Tensor], dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """Detached copies (optionally cast, e.g. fp32 master copies)."""
    return {k: v.detach().to(dtype=dtype or v.dtype, copy=True) for k, v in tensors.items()}


@attrs.frozen
class TaskStep:
    """The task loss and one AdamW per trained group (e.g. the heads' at a scaled rate).

    Args:
      task_loss: ``(outputs, batch) -> scalar``.
      optimizers: ``{group: AdamW}``; the first group's rate is the step's ``lr`` metric.
    """

    task_loss: TaskLoss
    optimizers: Mapping[str, AdamW]

    @classmethod
    def with_heads(cls, task_loss: TaskLoss, name: str, optimizer: AdamW, head_lr_scale: float) -> TaskStep:
        """Group ``name`` under ``optimizer`` and ``"heads"`` at ``head_lr_scale`` × its rate."""
        return cls(task_loss, {name: optimizer, "heads": head_optimizer(optimizer, head_lr_scale)})

    def init(self, params: Mapping[str, dict[str, Tensor]]) -> TaskState:
        """Step 0 with fresh optimiser states; ``params`` are taken as they are."""
        return TaskState(0, dict(params), {g: self.optimizers[g].init(p) for g, p in params.items()})

    def gradients(
        self, state: TaskState, forward: Forward, batch: Mapping[str, Tensor]
    ) -> tuple[dict[str, dict[str, Tensor]], dict[str, float]]:
        """``∇_θ L(forward(θ, batch), batch)`` per group and ``{"task_loss", "lr"}``.

        Under ``torchrun`` (inside :func:`moil.distributed.active`, as ``moil.train.train``
        runs a step) ``batch`` is this rank's slice and the loss and gradients are averaged
        over ranks (:func:`moil.distributed.all_reduce_mean`): every rank gets the gradient
        of the global batch's mean loss.

        Raises:
          FloatingPointError: the loss is NaN/inf (the state is not changed; on every rank).
          NotImplementedError: on several ranks, a loss that is not a mean over examples.
        """
        world = current()
        check_mean_loss(self.task_loss, world)
        grads, loss, _ = leaf_gradients(
            lambda tree: (self.task_loss(forward(tree, batch), batch), None), state.params
        )
        if world.size > 1:
            loss, grads = all_reduce_mean(loss, grads, world)
        first = next(iter(self.optimizers.values()))
        return grads, {
            "task_loss": check_finite(loss, "task loss", state.step),
            "lr": first.learning_rate(state.step),
        }

    def apply(self, state: TaskState, grads: Mapping[str, dict[str, Tensor]]) -> TaskState:
        """One AdamW step of every group; a new state (``state`` untouched)."""
        params, opts = {}, {}
        for g, p in state.params.items():
            params[g], opts[g] = self.optimizers[g].update(grads[g], state.opts[g], p)
        return state._replace(step=state.step + 1, params=params, opts=opts)

    def step(self, state: TaskState, forward: Forward, batch: Mapping[str, Tensor]) -> tuple[TaskState, dict]:
        """:meth:`gradients`, then :meth:`apply`."""
        grads, metrics = self.gradients(state, forward, batch)
        return self.apply(state, grads), metrics
