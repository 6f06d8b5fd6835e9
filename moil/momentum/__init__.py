"""Momentum targets and their schedules.

``ema_update`` is the pure EMA step ``W̄ ← m·W̄ + (1−m)·W`` over a dict of tensors;
``MomentumTarget`` wraps it as ``init(teacher) -> state`` / ``update(state, teacher)``
with a schedule ``step -> m`` (``Constant``, ``CosineRamp``, ``LinearWarmup``,
``HalfLife``, or any ``Callable[[int], float]``).
"""

from moil.momentum.ema import MomentumState, MomentumTarget, ema_update
from moil.momentum.schedules import (
    REFERENCE_MOMENTUM,
    Constant,
    CosineRamp,
    HalfLife,
    LinearWarmup,
    Schedule,
    half_life_of,
)

__all__ = [
    "ema_update",
    "MomentumState",
    "MomentumTarget",
    "REFERENCE_MOMENTUM",
    "Schedule",
    "Constant",
    "CosineRamp",
    "LinearWarmup",
    "HalfLife",
    "half_life_of",
]
