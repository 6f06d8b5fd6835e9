"""Momentum targets.

``ema_update`` is the pure EMA step ``W̄ ← m·W̄ + (1−m)·W`` over a dict of tensors;
``MomentumTarget`` wraps it as ``init(teacher) -> state`` / ``update(state, teacher)``
with a schedule ``step -> m`` from :mod:`moil.schedules` (``Constant``, ``CosineRamp``,
``LinearWarmup``, ``HalfLife``, re-exported here) or any ``Callable[[int], float]``.
"""

from moil.momentum.ema import MomentumState, MomentumTarget, accumulation_dtype, ema_update
from moil.momentum.half_life import (
    REFERENCE_MOMENTUM,
    MomentumWarning,
    check_fits_run,
    half_life_of,
)
from moil.schedules import Constant, CosineRamp, HalfLife, LinearWarmup, Schedule

__all__ = [
    "REFERENCE_MOMENTUM",
    "Constant",
    "CosineRamp",
    "HalfLife",
    "LinearWarmup",
    "MomentumState",
    "MomentumTarget",
    "MomentumWarning",
    "Schedule",
    "accumulation_dtype",
    "check_fits_run",
    "ema_update",
    "half_life_of",
]
