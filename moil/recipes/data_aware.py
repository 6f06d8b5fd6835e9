r"""Refit a trained recipe's students in the norm of their layers' real inputs.

After training, each student imitates a target ``W̄`` (MoIL's momentum target, or
:class:`~moil.recipes.ImitateFixed`'s fixed weights). :func:`data_aware_refit` replaces
every student by its closed-form fit in the ``Σ``-norm,

.. math::
    \hat\theta = \arg\min_\theta \sum_t E_x \|(\bar W_t - \hat W_t(\theta))\,x\|^2,

with ``Σ_t = E[x xᵀ]`` read from the *target's* own forward on ``batches`` (the inputs
each layer sees when the network runs with the weights the student stands in for):
:class:`~moil.solvers.WhitenedSVDFit` for LowRank, :class:`~moil.solvers.WhitenedALSFit`
for Transform / Hybrid. Everything else in the state is left as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

from moil.approx import Hybrid, LowRank, Transform
from moil.backbones.moments import input_moments
from moil.solvers.data_aware import WhitenedALSFit, WhitenedSVDFit

__all__ = ["data_aware_refit"]


def _solver(name: str, approx: Any, moments: Mapping[str, Tensor], iterations: int):
    if isinstance(approx, LowRank):
        return WhitenedSVDFit(moments)
    if isinstance(approx, (Transform, Hybrid)):
        return WhitenedALSFit(moments, iterations=iterations)
    raise TypeError(
        f"data_aware_refit: student {name!r} is a {type(approx).__name__}, which has no data-aware "
        "closed form (LowRank, Transform and Hybrid do); leave it out with only=[...]."
    )


def _with_students(state: Any, students: dict[str, dict[str, Tensor]]) -> Any:
    if hasattr(state, "imitation"):  # MoILState
        return state._replace(imitation=state.imitation._replace(students=students))
    if hasattr(state, "students") and hasattr(state, "_replace"):  # ImitationState (ImitateFixed)
        return state._replace(students=students)
    raise TypeError(f"data_aware_refit: a {type(state).__name__} has no students to refit (use MoIL or ImitateFixed).")


def data_aware_refit(
    recipe: Any,
    state: Any,
    backbone: Any,
    batches: Iterable[Mapping[str, Tensor]],
    *,
    only: Iterable[str] | None = None,
    iterations: int = 8,
) -> Any:
    """The state with each student (or those in ``only``) refitted in its target's ``Σ``-norm.

    Args:
      recipe: a recipe with students (:class:`~moil.recipes.MoIL`, :class:`~moil.recipes.ImitateFixed`).
      state: its (finalized or not) state.
      backbone: the backbone it was trained on.
      batches: batches whose inputs define ``Σ`` (e.g. a few hundred training examples);
        read once per distinct target, so a list, not a one-shot iterator.
      only: student names to refit (default: all).
      iterations: alternation rounds of the Hybrid / Transform fit.

    Returns:
      A new state; the given one is not modified.

    Raises:
      KeyError: a name in ``only`` is not a student. TypeError: an approximation with no
      data-aware closed form, or a recipe without students.
    """
    batches = list(batches)
    students = recipe.students_of(state, backbone)
    names = list(students) if only is None else list(only)
    unknown = [n for n in names if n not in students]
    if unknown:
        raise KeyError(f"data_aware_refit: no student {unknown}; this recipe has {sorted(students)}.")
    targets = recipe.imitation_targets(state, backbone)
    candidates = recipe.candidates(state, backbone)
    heads = {k: v for k, v in candidates[f"student/{names[0]}"].items() if k in backbone.heads} if names else {}
    base = backbone.base()
    moments_of: dict[int, dict[str, Tensor]] = {}  # one Σ per distinct target, not per student
    new = {n: params for n, (_, params) in students.items()}
    for name in names:
        adapter, params = students[name]
        target = targets[name]
        if id(target) not in moments_of:
            moments_of[id(target)] = input_moments(backbone, {**target, **heads}, batches)
        solver = _solver(name, adapter.approx, moments_of[id(target)], iterations)
        new[name] = solver.fit(adapter, base, target, params)
    return _with_students(state, new)
