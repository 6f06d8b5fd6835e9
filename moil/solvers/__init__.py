"""Imitation solvers: how a student follows its target.

:class:`Gradient` takes optimiser steps on an imitation loss (the reference, or
``k`` steps per task step); :class:`SVDFit` and :class:`ALSFit` jump to the
closed-form optimum for a fixed target, periodically or once at the end
(:class:`FitOnly`: only then, no work per task step);
:class:`WhitenedSVDFit` and :class:`WhitenedALSFit` do so in the norm of the layer's
real inputs (``E‖(W̄ − Ŵ)x‖²``), and :func:`allocate_ranks` splits a stored-size
budget over targets by their spectra.
"""

from moil.solvers.allocation import adapters_by_rank, allocate_ranks, allocation_error, rank_costs, spectra
from moil.solvers.closed_form import ALSFit, SVDFit, reduced_rank_regression
from moil.solvers.data_aware import WhitenedALSFit, WhitenedSVDFit, whitening
from moil.solvers.fit_only import FitOnly
from moil.solvers.gradient import Gradient

__all__ = [
    "ALSFit",
    "FitOnly",
    "Gradient",
    "SVDFit",
    "WhitenedALSFit",
    "WhitenedSVDFit",
    "adapters_by_rank",
    "allocate_ranks",
    "allocation_error",
    "rank_costs",
    "reduced_rank_regression",
    "spectra",
    "whitening",
]
