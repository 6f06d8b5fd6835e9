"""A stored student: which approximation, and how it follows its momentum target."""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from typing import Any

import attrs
import torch

from moil.approx import Adapter, Approximation
from moil.momentum import MomentumTarget, check_fits_run
from moil.schedules import bounds_of
from moil.solvers.fit_only import FitOnly, check_fit_only

__all__ = ["Student", "as_students", "check_momenta_fit_run", "student_seed"]


def _momentum(instance, attribute, value) -> None:
    if value is not None:
        MomentumTarget(value)  # the momentum's own checks: a schedule with values in [0, 1]


def _learning_rate(instance, attribute, value) -> None:
    if value is None:
        return
    if callable(value):
        bounds = bounds_of(value)
        if bounds is not None and not (math.isfinite(bounds[1]) and bounds[0] >= 0):
            raise ValueError(
                f"Student: the lr schedule {value!r} takes values in {bounds}; learning rates are finite "
                "and >= 0 (a negative rate trains the student away from its target)."
            )
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(
            f"Student: lr must be a finite number >= 0, a schedule or None, got lr={value!r}; e.g. "
            "lr=1e-3, or None for the recipe's (a negative rate trains the student away from its target)."
        )


def _has(method: str):
    def check(instance, attribute, value) -> None:
        if value is not None and not callable(getattr(value, method, None)):
            raise TypeError(
                f"Student: {attribute.name} must have a .{method}(...) method (e.g. "
                f"moil.solvers.{'Gradient()' if method == 'update' else 'SVDFit()'}), got {value!r}."
            )

    return check


def _optional_positive(instance, attribute, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(
            f"Student: {attribute.name} must be an integer >= 1 or None, got {attribute.name}={value!r}."
        )


@attrs.frozen
class Student:
    """One stored student: an approximation and how it learns.

    Args:
      approx: the approximation function (e.g. ``Hybrid(96)``).
      momentum: the momentum schedule of the target it imitates (``step -> m`` or a
        float); ``None`` uses the recipe's. Students with equal schedules share one target.
      lr: its learning rate (a float or schedule); ``None`` uses the recipe's.
      solver: how it follows its target each step (``moil.solvers.Gradient``;
        ``moil.solvers.FitOnly()``: not at all, only its refits set it); ``None`` uses the recipe's.
      refit: a closed-form solver (``SVDFit``, ``ALSFit``) applied every
        ``refit_every`` steps (if set) and at ``finalize`` when ``final_fit``.
      sharing: overrides the backbone's sharing rule (``False`` for none).
    """

    approx: Approximation
    momentum: Any = attrs.field(default=None, validator=_momentum)
    lr: Any = attrs.field(default=None, validator=_learning_rate)
    solver: Any = attrs.field(default=None, validator=_has("update"))
    refit: Any = attrs.field(default=None, validator=_has("fit"))
    refit_every: int | None = attrs.field(default=None, validator=_optional_positive)
    final_fit: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    sharing: Any = None

    def __attrs_post_init__(self) -> None:
        if (self.refit_every or self.final_fit) and self.refit is None:
            raise ValueError(
                "Student: refit_every/final_fit need a closed-form solver, e.g. "
                "Student(approx, refit=moil.solvers.SVDFit(), final_fit=True)."
            )
        if isinstance(self.solver, FitOnly):
            check_fit_only("Student", self.refit, self.final_fit, self.lr)

    def adapter(self, backbone: Any) -> Adapter:
        """This student's :class:`Adapter` over the backbone's targets.

        The backbone's default sharing (the transform shared by q/k/v) applies to the
        keys this approximation can share; a LowRank student shares nothing.
        """
        if self.sharing is not None:
            return Adapter(self.approx, backbone.targets, self.sharing or None)
        return backbone.adapter(self.approx)


def check_momenta_fit_run(students: Mapping[str, Student], default: Any, steps: int) -> None:
    """Warn for every distinct momentum of ``students`` (``default`` where a student has
    none) that would leave its target mostly at ``W0`` over a run of ``steps``."""
    for schedule in {default if s.momentum is None else s.momentum for s in students.values()}:
        check_fits_run(MomentumTarget(schedule).schedule, steps)


def as_students(students: Any) -> dict[str, Student]:
    """Normalise ``Approximation | Student | {name: either}`` to ``{name: Student}``."""
    if isinstance(students, (list, tuple, set)):
        raise TypeError(f"students is a {type(students).__name__}; give one approximation or Student, or "
                        "name several: {'hybrid': Hybrid(8), 'lowrank': LowRank(11)}.")
    if not isinstance(students, Mapping):
        students = {"student": students}
    out = {}
    for name, s in students.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"student name {name!r} must be a non-empty string without '/'.")
        out[name] = s if isinstance(s, Student) else Student(s)
    if not out:
        raise ValueError("no students given; pass an approximation, e.g. students=Hybrid(8).")
    return out


def student_seed(seed: int, name: str) -> torch.Generator:
    """A generator seeded by ``(seed, name)``: a student's init does not depend on which
    other students share the run, so one run with k students equals k runs."""
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
