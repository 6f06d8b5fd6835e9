"""Momentum schedules: plain callables ``step -> m`` with ``m`` in ``[0, 1]``.

A schedule says how strongly the momentum target holds on to its past at update
``step`` (``step = 0`` is the first update). Each schedule is an immutable
:func:`attrs.frozen` class that checks its configuration when it is built, so a bad
value fails where it enters, not thousands of steps later. Any other
``Callable[[int], float]`` works wherever a schedule is expected.

The MoIL reference implementation uses the constant ``m = 0.9996``
(:data:`REFERENCE_MOMENTUM`), whose half-life is about 1733 updates. For runs that are
not much longer than that, pick the momentum from a half-life instead
(:class:`HalfLife`), a fraction of the run length.

References:
    G. Luo et al., "MoIL: Momentum Imitation Learning for Efficient Vision-Language
    Adaptation", IEEE TPAMI 47(7), 2025 (constant momentum, reference implementation).
    J.-B. Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020 (cosine ramp to 1).
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Callable

import attrs

__all__ = [
    "REFERENCE_MOMENTUM",
    "Schedule",
    "Constant",
    "CosineRamp",
    "LinearWarmup",
    "HalfLife",
    "half_life_of",
]

Schedule = Callable[[int], float]
"""A momentum schedule: update index ``step >= 0`` to momentum ``m`` in ``[0, 1]``."""

REFERENCE_MOMENTUM = 0.9996
"""The constant momentum of the MoIL reference implementation (half-life ≈ 1733 updates)."""


def _momentum_value(instance: object, attribute: attrs.Attribute, value: float) -> None:
    name = f"{type(instance).__name__}.{attribute.name}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number in [0, 1], got {attribute.name}={value!r}")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(
            f"{name} must be a finite momentum in [0, 1], got {attribute.name}={value!r}; "
            "0 copies the source at every update, 1 never moves the target"
        )


def _whole_steps(instance: object, attribute: attrs.Attribute, value: int) -> None:
    name = f"{type(instance).__name__}.{attribute.name}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer >= 1, got {attribute.name}={value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {attribute.name}={value!r}")


def _real_steps(instance: object, attribute: attrs.Attribute, value: float) -> None:
    name = f"{type(instance).__name__}.{attribute.name}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a finite number >= 1, got {attribute.name}={value!r}")
    if not (math.isfinite(value) and value >= 1):
        raise ValueError(f"{name} must be a finite number >= 1, got {attribute.name}={value!r}")


def _check_step(schedule: object, step: int) -> int:
    if isinstance(step, bool):
        raise TypeError(
            f"{type(schedule).__name__}: step must be an integer >= 0, got step={step!r}"
        )
    try:
        step = operator.index(step)
    except TypeError:
        raise TypeError(
            f"{type(schedule).__name__}: step must be an integer >= 0, got step={step!r}"
        ) from None
    if step < 0:
        raise ValueError(f"{type(schedule).__name__}: step must be >= 0, got step={step}")
    return step


def _float(value: float) -> float:
    # Any real number (int, numpy scalar) becomes a float; bools and other types are
    # left for the validator to reject with a clear message.
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value


def _int(value: int) -> int:
    # Integer-like values (numpy ints) become int; anything else goes to the validator.
    if isinstance(value, bool):
        return value
    try:
        return operator.index(value)
    except TypeError:
        return value


@attrs.frozen
class Constant:
    """The same momentum at every update: ``m_t = value``.

    Args:
        value: the momentum, a finite number in ``[0, 1]``.

    Raises:
        ValueError: ``value`` is outside ``[0, 1]`` or not finite.

    Example:
        >>> Constant(REFERENCE_MOMENTUM)(0)
        0.9996

    References:
        MoIL reference implementation (``m = 0.9996``).
    """

    value: float = attrs.field(converter=_float, validator=_momentum_value)

    def __call__(self, step: int) -> float:
        _check_step(self, step)
        return self.value


@attrs.frozen
class CosineRamp:
    """Cosine increase of the momentum from ``start`` to ``end`` over ``steps`` updates.

    .. math::
        m_t = e - (e - s)\\,\\frac{\\cos(\\pi \\min(t, T)/T) + 1}{2}

    with ``s = start``, ``e = end``, ``T = steps``: ``m_0 = s``, ``m_t = e`` for
    ``t >= T``, monotone non-decreasing in between. The target follows the teacher
    closely early on and settles later.

    Args:
        start: momentum at step 0, in ``[0, 1]``.
        end: momentum from step ``steps`` on, in ``[start, 1]`` (default 1.0, as in BYOL).
        steps: length ``T`` of the ramp, an integer >= 1 (keyword-only).

    Raises:
        ValueError: a momentum outside ``[0, 1]``, ``start > end`` or ``steps < 1``.

    Example:
        >>> ramp = CosineRamp(0.99, steps=100)
        >>> ramp(0), ramp(50), ramp(100), ramp(1000)
        (0.99, 0.995, 1.0, 1.0)

    References:
        J.-B. Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020, Sec. 3.2.
    """

    start: float = attrs.field(converter=_float, validator=_momentum_value)
    end: float = attrs.field(default=1.0, converter=_float, validator=_momentum_value)
    steps: int = attrs.field(kw_only=True, converter=_int, validator=_whole_steps)

    def __attrs_post_init__(self) -> None:
        if self.start > self.end:
            raise ValueError(
                f"CosineRamp needs start <= end, got start={self.start!r}, end={self.end!r}; "
                "use LinearWarmup for a decreasing momentum"
            )

    def __call__(self, step: int) -> float:
        step = _check_step(self, step)
        if step >= self.steps:
            return self.end
        rise = (1.0 - math.cos(math.pi * step / self.steps)) / 2.0  # 0 -> 1
        value = self.start + (self.end - self.start) * rise
        return min(max(value, self.start), self.end)


@attrs.frozen
class LinearWarmup:
    """Linear change of the momentum from ``start`` to ``end`` over ``steps`` updates.

    .. math::
        m_t = s + (e - s)\\,\\frac{\\min(t, T)}{T}

    so ``m_0 = s`` and ``m_t = e`` for ``t >= T``. Monotone non-decreasing when
    ``start <= end``; ``start > end`` gives a linear decay, which is allowed.

    Args:
        start: momentum at step 0, in ``[0, 1]``.
        end: momentum from step ``steps`` on, in ``[0, 1]``.
        steps: length ``T`` of the warm-up, an integer >= 1.

    Raises:
        ValueError: a momentum outside ``[0, 1]`` or ``steps < 1``.

    Example:
        >>> warm = LinearWarmup(0.9, 0.99, 10)
        >>> warm(0), warm(10), warm(11)
        (0.9, 0.99, 0.99)
    """

    start: float = attrs.field(converter=_float, validator=_momentum_value)
    end: float = attrs.field(converter=_float, validator=_momentum_value)
    steps: int = attrs.field(converter=_int, validator=_whole_steps)

    def __call__(self, step: int) -> float:
        step = _check_step(self, step)
        if step >= self.steps:
            return self.end
        value = self.start + (self.end - self.start) * (step / self.steps)
        low, high = min(self.start, self.end), max(self.start, self.end)
        return min(max(value, low), high)


@attrs.frozen
class HalfLife:
    """Constant momentum chosen by its half-life in updates.

    .. math::
        m = 2^{-1/h}, \\qquad m^h = \\tfrac12

    After ``h = steps`` updates towards a fixed source, the target keeps half of its
    old distance to it (the EMA weight of a value ``h`` updates old is halved). The
    reference ``m = 0.9996`` has ``h ≈ 1732.5`` (see :func:`half_life_of`): far too slow
    for a run of a few thousand steps, where the target would barely leave its
    initialisation. For short runs, choose ``steps`` as a fraction of the run length
    (e.g. a tenth of it).

    Args:
        steps: the half-life ``h`` in updates, a finite number >= 1 (need not be whole).

    Raises:
        ValueError: ``steps`` is below 1 or not finite.

    Example:
        >>> m = HalfLife(100)(0)
        >>> round(m, 6), round(m ** 100, 12)
        (0.993092, 0.5)
    """

    steps: float = attrs.field(converter=_float, validator=_real_steps)

    @property
    def value(self) -> float:
        """The constant momentum ``2^{-1/steps}``."""
        return 0.5 ** (1.0 / self.steps)

    def __call__(self, step: int) -> float:
        _check_step(self, step)
        return self.value


def half_life_of(momentum: float) -> float:
    """Half-life in updates of a constant momentum: ``h = ln(1/2) / ln(m)``.

    The inverse of :class:`HalfLife`: ``half_life_of(HalfLife(h)(0)) ≈ h``.
    ``half_life_of(0) == 0`` (the target forgets at once) and ``half_life_of(1)`` is
    infinite (it never moves).

    Args:
        momentum: ``m`` in ``[0, 1]``.

    Returns:
        ``h >= 0`` as a float, possibly ``math.inf``.

    Raises:
        ValueError: ``momentum`` is outside ``[0, 1]`` or not finite.

    Example:
        >>> round(half_life_of(REFERENCE_MOMENTUM), 1)
        1732.5
    """
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise TypeError(f"half_life_of: momentum must be a real number, got momentum={momentum!r}")
    momentum = float(momentum)
    if not (math.isfinite(momentum) and 0.0 <= momentum <= 1.0):
        raise ValueError(f"half_life_of: momentum must be in [0, 1], got momentum={momentum!r}")
    if momentum == 0.0:
        return 0.0
    if momentum == 1.0:
        return math.inf
    # m - 1 is exact for m in [0.5, 1] (Sterbenz), so log1p keeps full precision near 1.
    return math.log(0.5) / math.log1p(momentum - 1.0)
