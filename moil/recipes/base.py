"""What every recipe shares: the student spec, the task-gradient step, seeding, checks.

A *recipe* is an immutable component with four pure methods::

    init(backbone, *, seed=0)            -> state            (a NamedTuple of dicts)
    step(state, backbone, batch)         -> (state, metrics)  (metrics: dict[str, float])
    finalize(state, backbone)            -> state            (end-of-training fits)
    candidates(state, backbone)          -> {name: overrides} (parameter sets to evaluate)
    students(state, backbone)            -> {name: (Adapter, params)}  (what is stored)

``overrides`` are the tensors handed to ``backbone(params, batch)``: effective
target weights/biases and head parameters. States hold only tensors, ints and
floats, so :mod:`moil.recipes.state` can checkpoint any recipe exactly.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Callable, Mapping, Protocol

import attrs
import torch
from torch import Tensor

from moil.approx import Adapter, Approximation
from moil.optim import AdamW, Constant, Scaled

__all__ = [
    "Recipe", "Student", "TaskLoss", "as_students", "check_finite", "clone", "head_optimizer",
    "student_seed", "task_gradients",
]

TaskLoss = Callable[[Mapping[str, Tensor], Mapping[str, Tensor]], Tensor]


class Recipe(Protocol):
    def init(self, backbone: Any, *, seed: int = 0) -> Any: ...

    def step(self, state: Any, backbone: Any, batch: Mapping[str, Tensor]) -> tuple[Any, dict]: ...

    def finalize(self, state: Any, backbone: Any) -> Any: ...

    def candidates(self, state: Any, backbone: Any) -> dict[str, dict[str, Tensor]]: ...

    def students_of(self, state: Any, backbone: Any) -> dict[str, tuple[Adapter, dict[str, Tensor]]]: ...


def _optional_positive(instance, attribute, value) -> None:
    if value is not None and (not isinstance(value, (int, float)) or not value > 0):
        raise ValueError(f"Student: {attribute.name} must be > 0 or None, got {attribute.name}={value!r}.")


@attrs.frozen
class Student:
    """One stored student: an approximation and how it learns.

    Args:
      approx: the approximation function (e.g. ``Hybrid(96)``).
      momentum: the momentum schedule of the target it imitates (``step -> m`` or
        a float); ``None`` uses the recipe's. Students with equal schedules share
        one target.
      lr: its learning rate (a float or schedule); ``None`` uses the recipe's.
      solver: how it follows its target each step (``moil.solvers.Gradient``);
        ``None`` uses the recipe's.
      refit: a closed-form solver (``SVDFit``, ``ALSFit``) applied every
        ``refit_every`` steps (if set) and at :meth:`finalize` when ``final_fit``.
      sharing: overrides the backbone's sharing rule (``False`` for none).
    """

    approx: Approximation
    momentum: Any = None
    lr: Any = None
    solver: Any = None
    refit: Any = None
    refit_every: int | None = attrs.field(default=None, validator=_optional_positive)
    final_fit: bool = False
    sharing: Any = None

    def __attrs_post_init__(self) -> None:
        if (self.refit_every or self.final_fit) and self.refit is None:
            raise ValueError(
                "Student: refit_every/final_fit need a closed-form solver, e.g. "
                "Student(approx, refit=moil.solvers.SVDFit(), final_fit=True)."
            )

    def adapter(self, backbone: Any) -> Adapter:
        """This student's :class:`Adapter` over the backbone's targets.

        The backbone's default sharing (the transform shared by q/k/v) applies to
        the keys this approximation can share; a LowRank student shares nothing.
        """
        if self.sharing is not None:
            return Adapter(self.approx, backbone.targets, self.sharing or None)
        return backbone.adapter(self.approx)


def as_students(students: Any) -> dict[str, Student]:
    """Normalise ``Approximation | Student | {name: either}`` to ``{name: Student}``."""
    if not isinstance(students, Mapping):
        students = {"student": students}
    out = {}
    for name, s in students.items():
        if "/" in name:
            raise ValueError(f"student name {name!r} must not contain '/'.")
        out[name] = s if isinstance(s, Student) else Student(s)
    if not out:
        raise ValueError("no students given; pass an approximation, e.g. students=Hybrid(8).")
    return out


def student_seed(seed: int, name: str) -> torch.Generator:
    """A generator seeded by ``(seed, name)``: a student's init does not depend on
    which other students share the run, so one run with k students equals k runs."""
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)


def check_finite(value: Tensor | float, what: str, step: int) -> float:
    """Return ``float(value)`` or raise if it is NaN/inf (before any state changes)."""
    v = float(value.detach()) if isinstance(value, Tensor) else float(value)
    if not math.isfinite(v):
        raise FloatingPointError(
            f"{what} is {v} at step {step}; the state was not updated. Lower the learning "
            "rate, check the batch for NaN/inf inputs, or use fp32 instead of fp16."
        )
    return v


def task_gradients(
    backbone: Any,
    task_loss: TaskLoss,
    trainable: dict[str, dict[str, Tensor]],
    build: Callable[[dict[str, dict[str, Tensor]]], dict[str, Tensor]],
    batch: Mapping[str, Tensor],
) -> tuple[dict[str, dict[str, Tensor]], Tensor, dict[str, Tensor]]:
    """``∇ task_loss(backbone(build(trainable), batch), batch)`` w.r.t. ``trainable``.

    ``build`` turns the trainable groups (e.g. teacher and heads, or student and
    heads) into the override dict the backbone reads. Returns (grads, loss, outputs).

    The gradient is taken with ``torch.autograd.grad`` on fresh leaves (detached
    aliases of the inputs — no copy, nothing of the caller's is changed): for a
    transformer it keeps about half the activation memory ``torch.func.grad``
    does (benchmarks/README.md) and gives the same gradients.
    """
    leaves = {g: {k: v.detach().requires_grad_(True) for k, v in group.items()} for g, group in trainable.items()}
    flat = [v for group in leaves.values() for v in group.values()]
    with torch.enable_grad():
        outputs = backbone(build(leaves), batch)
        value = task_loss(outputs, batch)
        grads = torch.autograd.grad(value, flat, allow_unused=True)
    it = iter(grads)
    tree: dict[str, dict[str, Tensor]] = {}
    for g, group in leaves.items():
        tree[g] = {}
        for k, v in group.items():
            grad = next(it)  # None: the loss does not depend on it (e.g. an unused head)
            tree[g][k] = torch.zeros_like(v) if grad is None else grad
    return tree, value.detach(), {k: v.detach() for k, v in outputs.items()}


def clone(tensors: Mapping[str, Tensor], dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """Detached copies (optionally cast, e.g. fp32 master copies)."""
    return {k: v.detach().to(dtype=dtype or v.dtype, copy=True) for k, v in tensors.items()}


def head_optimizer(optimizer: AdamW, scale: float) -> AdamW:
    """The optimiser with its learning rate multiplied by ``scale`` (heads often learn faster)."""
    lr = optimizer.lr if callable(optimizer.lr) else Constant(optimizer.lr)
    return optimizer if scale == 1.0 else attrs.evolve(optimizer, lr=Scaled(lr, scale))
