"""How long a momentum target remembers: half-lives, and whether a momentum fits a run.

A constant momentum ``m`` keeps half of the target's distance to a fixed source after
``h = ln(1/2) / ln(m)`` updates. After ``N`` updates of any schedule the target still
holds a weight ``Π_{k<N} m_k`` on where it started (the pre-trained weights): when that
is above one half, the students imitate mostly ``W0`` — the silent no-op of a momentum
too slow for its run, which :func:`check_fits_run` turns into a warning.

References:
    G. Luo et al., "MoIL", IEEE TPAMI 47(7), 2025 (reference ``m = 0.9996``).
"""

from __future__ import annotations

import math
import numbers
import warnings

from torch import Tensor

from moil.schedules import Schedule

__all__ = ["REFERENCE_MOMENTUM", "MomentumWarning", "check_fits_run", "check_momentum", "half_life_of", "start_weight"]

REFERENCE_MOMENTUM = 0.9996
"""The constant momentum of the MoIL reference implementation (half-life ≈ 1733 updates)."""


class MomentumWarning(UserWarning):
    """A momentum so slow for its run that the target stays near the pre-trained weights."""


def check_momentum(momentum: float, owner: str) -> float:
    """``float(momentum)``, or a TypeError/ValueError naming ``owner``, the value and the range."""
    if isinstance(momentum, bool) or not isinstance(momentum, (numbers.Real, Tensor)):
        raise TypeError(f"{owner}: momentum must be a real number, got momentum={momentum!r}")
    if isinstance(momentum, Tensor) and momentum.numel() != 1:
        raise TypeError(f"{owner}: momentum must be a scalar, got a tensor of shape {tuple(momentum.shape)}")
    m = float(momentum)
    if not (math.isfinite(m) and 0.0 <= m <= 1.0):
        raise ValueError(
            f"{owner}: momentum must be a finite number in [0, 1], got momentum={m!r}; "
            "0 copies the source, 1 keeps the target"
        )
    return m


def half_life_of(momentum: float) -> float:
    """Half-life in updates of a constant momentum: ``h = ln(1/2) / ln(m)``.

    The inverse of :class:`moil.schedules.HalfLife`; ``half_life_of(0) == 0`` and
    ``half_life_of(1)`` is infinite.

    Example:
        >>> round(half_life_of(REFERENCE_MOMENTUM), 1)
        1732.5
    """
    momentum = check_momentum(momentum, "half_life_of")
    if momentum == 0.0:
        return 0.0
    if momentum == 1.0:
        return math.inf
    # m - 1 is exact for m in [0.5, 1] (Sterbenz), so log1p keeps full precision near 1.
    return math.log(0.5) / math.log1p(momentum - 1.0)


def start_weight(schedule: Schedule, steps: int, *, below: float = 0.0) -> float:
    """``Π_{k<steps} m_k``: the weight the target still puts on its start after ``steps``
    updates (stops early once it falls to ``below``)."""
    weight = 1.0
    for k in range(steps):
        weight *= float(schedule(k))
        if weight <= below:
            break
    return weight


def check_fits_run(schedule: Schedule, steps: int, *, what: str = "momentum") -> None:
    """Warn (:class:`MomentumWarning`) when a target on ``schedule`` would keep more than
    half of its weight on the pre-trained values after a run of ``steps`` updates."""
    weight = start_weight(schedule, steps, below=0.5)
    if steps > 0 and weight > 0.5:
        warnings.warn(
            f"{what} {schedule!r}: after the run's {steps} steps the momentum target still "
            f"holds {weight:.0%} of the pre-trained weights, so the students would imitate "
            "little of the fine-tuning. Use a half-life shorter than the run, e.g. "
            "moil.schedules.HalfLife(fraction=0.1) (a tenth of it), or a lower momentum.",
            MomentumWarning,
            stacklevel=3,
        )
