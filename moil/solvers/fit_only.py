"""A student set only by its closed-form fit: no imitation work per task step."""

from __future__ import annotations

from collections.abc import Mapping

import attrs
from torch import Tensor

from moil.approx import Adapter
from moil.optim import AdamState, AdamW

__all__ = ["FitOnly"]


@attrs.frozen
class FitOnly:
    r"""Leave the student as it is at every task step; its :class:`~moil.recipes.Student`'s
    ``refit`` (``SVDFit``, ``ALSFit``) sets it, every ``refit_every`` steps and/or at
    ``finalize`` (``final_fit``).

    Where the stored student is a closed-form fit of its final target, the gradient steps
    of :class:`~moil.solvers.Gradient` only change where that fit starts: nothing for
    :class:`~moil.solvers.SVDFit` (the truncated SVD of ``W̄ − W0`` is the same from any
    start), the warm start of :class:`~moil.solvers.ALSFit`. With ``FitOnly`` the
    imitation's cost per task step is the momentum update alone, ``O(out · in)`` per
    target, and the fit costs once what it costs.
    """

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
        """``(params, opt_state, {})``: the same tensors, no metrics (no distance is formed)."""
        return params, opt_state, {}
