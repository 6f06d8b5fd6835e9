"""Follow the target by gradient steps on an imitation loss (MoIL's reference solver)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs
from torch import Tensor

from moil.approx import Adapter
from moil.autodiff import leaf_gradients
from moil.objectives import imitation_loss, squared_frobenius_distance
from moil.optim import AdamState, AdamW
from moil.solvers.frobenius_gradient import closed_form_weights, differences, frobenius_gradient

__all__ = ["Gradient"]


def _positive_int(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Gradient: steps must be an integer >= 1, got steps={value!r}.")


@attrs.frozen
class Gradient:
    r"""``k`` optimiser steps on ``loss(merge(θ), target)`` per task step.

    With ``k = 1`` and :func:`moil.objectives.imitation_loss` this is the
    reference: the student takes one AdamW step on
    ``Σ_t mean((W̄_t − Ŵ_t)²) + mean((b̄_t − b̂_t)²)`` alongside the teacher's
    task step. Imitation needs weights only, no data, so extra steps are cheap
    (``O(targets · out · in · r)`` each, no forward pass). For the Frobenius losses
    on LowRank/Transform/Hybrid the gradient is taken in closed form
    (:mod:`moil.solvers.frobenius_gradient`, no ``Ŵ`` formed); any other loss or
    approximation goes through autograd.

    Args:
      steps: ``k ≥ 1``.
      loss: ``(student_tensors, target_tensors) -> scalar``.
    """

    steps: int = attrs.field(default=1, validator=_positive_int)
    loss: Callable[[Mapping[str, Tensor], Mapping[str, Tensor]], Tensor] = imitation_loss

    def update(
        self,
        adapter: Adapter,
        base: Mapping[str, Tensor],
        params: dict[str, Tensor],
        opt_state: AdamState,
        optimizer: AdamW,
        target: Mapping[str, Tensor],
        step: int | None = None,
    ) -> tuple[dict[str, Tensor], AdamState, dict[str, float]]:
        """Returns new params, optimiser state and ``{"imitation_loss", "distance"}``
        measured *before* the last step (what the gradient saw), as 0-dim tensors: no
        host synchronisation here (the caller checks them all at once).

        ``step`` is the task step: all ``k`` updates use the learning rate of that
        step, so the schedule spans the run whatever ``k`` is (indexing it by the
        optimiser's own update count would exhaust it after ``1/k`` of the run).
        """
        lr = None if step is None else optimizer.learning_rate(step)
        weight = closed_form_weights(self.loss, adapter)
        # Δ = T − W0 once for all k steps (one more copy of the targets held meanwhile).
        deltas = differences(adapter, base, target) if weight and self.steps > 1 else None
        for _ in range(self.steps):
            closed = weight and frobenius_gradient(adapter, base, params, target, weight, deltas)
            if closed:
                grads, value, squared = closed
            else:
                grads, value, merged = leaf_gradients(lambda p: self._loss(adapter, base, p, target), params)
                squared = squared_frobenius_distance(merged, target)
            params, opt_state = optimizer.update(grads, opt_state, params, lr=lr)
        return params, opt_state, {"imitation_loss": value, "distance": squared.sqrt()}

    def _loss(self, adapter, base, params, target):
        merged = adapter.merge(params, base)
        return self.loss(merged, target), merged
