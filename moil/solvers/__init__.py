"""Imitation solvers: how a student follows its target.

:class:`Gradient` takes optimiser steps on an imitation loss (the reference, or
``k`` steps per task step); :class:`SVDFit` and :class:`ALSFit` jump to the
closed-form optimum for a fixed target, periodically or once at the end.
"""

from moil.solvers.closed_form import ALSFit, SVDFit, reduced_rank_regression
from moil.solvers.gradient import Gradient

__all__ = ["ALSFit", "Gradient", "SVDFit", "reduced_rank_regression"]
