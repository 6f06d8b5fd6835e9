"""A student set only by its closed-form fit: no imitation work per task step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from torch import Tensor

from moil.approx import Adapter
from moil.optim import AdamState, AdamW

__all__ = ["FitOnly", "check_fit_only"]


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
    target, plus one fit every ``refit_every`` steps if set; the final fit costs once what
    it costs. A FitOnly student needs ``final_fit`` (else it stores a fit of an older target,
    or none at all) and keeps no optimiser moments (:func:`check_fit_only`).
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


def check_fit_only(who: str, refit: Any, final_fit: bool, lr: Any) -> None:
    """Refuse a :class:`FitOnly` student that nothing would set, or given an lr it never reads.

    ``who`` names the student in the message (e.g. ``"Student"``, ``"student 'h'"``).
    """
    if refit is None or not final_fit:
        raise ValueError(
            f"{who}: solver=FitOnly() never moves the student by itself, so it needs a closed-form "
            f"refit and final_fit=True (got refit={refit!r}, final_fit={final_fit!r}), e.g. "
            "Student(approx, solver=FitOnly(), refit=moil.solvers.ALSFit(), final_fit=True); without "
            "the final fit it stores its initialisation, or a fit of an older target."
        )
    if lr is not None:
        raise ValueError(f"{who}: lr={lr!r} is only read by gradient steps, and solver=FitOnly() takes "
                         "none; remove lr.")
