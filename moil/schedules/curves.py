"""The built-in schedules: ``step -> value`` curves, each checked when built."""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs

from moil.schedules._checks import _check_step, _float, _fraction, _int, _real, _unbound, _whole
from moil.schedules.binding import bounds_of

__all__ = ["Constant", "CosineRamp", "HalfLife", "LinearWarmup", "Scaled", "Schedule", "WarmupLinearDecay"]

Schedule = Callable[[int], float]
"""A schedule: update index ``step >= 0`` to a finite value ``>= 0``."""


@attrs.frozen
class Constant:
    """``s(t) = value`` for every ``t``.

    Example:
        >>> Constant(0.9996)(0)
        0.9996
    """

    value: float = attrs.field(converter=_float, validator=_real)

    @property
    def bounds(self) -> tuple[float, float]:
        return (self.value, self.value)

    def __call__(self, step: int) -> float:
        _check_step(self, step)
        return self.value


@attrs.frozen
class LinearWarmup:
    r"""Linear change from ``start`` to ``end`` over ``steps`` updates, then ``end``.

    .. math:: s(t) = a + (e - a)\,\min(t, T)/T

    ``start > end`` is a linear decay, which is allowed.

    Example:
        >>> warm = LinearWarmup(0.9, 0.99, 10)
        >>> warm(0), warm(10), warm(11)
        (0.9, 0.99, 0.99)
    """

    start: float = attrs.field(converter=_float, validator=_real)
    end: float = attrs.field(converter=_float, validator=_real)
    steps: int = attrs.field(converter=_int, validator=_whole)

    @property
    def bounds(self) -> tuple[float, float]:
        return (min(self.start, self.end), max(self.start, self.end))

    def __call__(self, step: int) -> float:
        step = _check_step(self, step)
        if step >= self.steps:
            return self.end
        low, high = self.bounds
        return min(max(self.start + (self.end - self.start) * (step / self.steps), low), high)


@attrs.frozen
class CosineRamp:
    r"""Cosine increase from ``start`` to ``end`` over ``steps`` updates, then ``end``.

    .. math:: s(t) = e - (e - a)\,\frac{\cos(\pi \min(t, T)/T) + 1}{2}

    Monotone non-decreasing (``start <= end``). As a momentum (BYOL): the target follows
    the teacher closely early on and settles later.

    Example:
        >>> ramp = CosineRamp(0.99, steps=100)
        >>> ramp(0), ramp(50), ramp(100), ramp(1000)
        (0.99, 0.995, 1.0, 1.0)
    """

    start: float = attrs.field(converter=_float, validator=_real)
    end: float = attrs.field(default=1.0, converter=_float, validator=_real)
    steps: int = attrs.field(kw_only=True, converter=_int, validator=_whole)

    def __attrs_post_init__(self) -> None:
        if self.start > self.end:
            raise ValueError(
                f"CosineRamp needs start <= end, got start={self.start!r}, end={self.end!r}; "
                "use LinearWarmup for a decreasing schedule"
            )

    @property
    def bounds(self) -> tuple[float, float]:
        return (self.start, self.end)

    def __call__(self, step: int) -> float:
        step = _check_step(self, step)
        if step >= self.steps:
            return self.end
        rise = (1.0 - math.cos(math.pi * step / self.steps)) / 2.0  # 0 -> 1
        return min(max(self.start + (self.end - self.start) * rise, self.start), self.end)


@attrs.frozen
class HalfLife:
    r"""A constant momentum given by its half-life: ``m = 2^{-1/h}``, so ``m^h = 1/2``.

    After ``h`` updates towards a fixed source the target keeps half of its distance to
    it. Give ``h`` in updates (``HalfLife(200)``) or as a fraction of the run
    (``HalfLife(fraction=0.1)``: a tenth of it, bound by :func:`bind_run`). The MoIL
    reference ``m = 0.9996`` has ``h ≈ 1733`` updates — far too slow for a short run,
    where the target would barely leave the pre-trained weights.

    Example:
        >>> m = HalfLife(100)(0)
        >>> round(m, 6), round(m ** 100, 12)
        (0.993092, 0.5)
    """

    steps: float | None = attrs.field(default=None, converter=_float)
    fraction: float | None = attrs.field(default=None, kw_only=True, converter=_float)

    def __attrs_post_init__(self) -> None:
        if (self.steps is None) == (self.fraction is None):
            raise ValueError(
                f"HalfLife takes steps or fraction, exactly one, got steps={self.steps!r}, "
                f"fraction={self.fraction!r}; e.g. HalfLife(200) or HalfLife(fraction=0.1)"
            )
        if self.steps is not None:
            if isinstance(self.steps, bool) or not isinstance(self.steps, float):
                raise TypeError(f"HalfLife.steps must be a number >= 1, got steps={self.steps!r}")
            if not (math.isfinite(self.steps) and self.steps >= 1):
                raise ValueError(f"HalfLife.steps must be a finite number >= 1, got steps={self.steps!r}")
        else:
            _fraction(self, attrs.fields(HalfLife).fraction, self.fraction)
            if self.fraction == 0.0:
                raise ValueError("HalfLife.fraction must be > 0, got fraction=0.0; use Constant(0.0) for no momentum")

    @property
    def value(self) -> float:
        """The constant momentum ``2^{-1/steps}``."""
        if self.steps is None:
            raise _unbound(self, "fraction")
        return 0.5 ** (1.0 / self.steps)

    @property
    def bounds(self) -> tuple[float, float]:
        return (0.5, 1.0) if self.steps is None else (self.value, self.value)

    def for_run(self, steps: int) -> HalfLife:
        """``HalfLife(max(1, fraction · steps))`` for a fraction; itself otherwise."""
        return self if self.fraction is None else HalfLife(max(1.0, self.fraction * steps))

    def __call__(self, step: int) -> float:
        _check_step(self, step)
        return self.value


@attrs.frozen
class WarmupLinearDecay:
    r"""Linear warm-up to ``peak`` over the first ``warmup`` fraction of ``total_steps``,
    then linear decay to 0 at ``total_steps``.

    With ``w = round(warmup · T)``: ``s(t) = peak·(t+1)/w`` for ``t < w``, then
    ``peak·(T − t)/(T − w)``. ``total_steps=None`` (default) means the run's length,
    bound by :func:`bind_run`; a bound schedule shorter than the run is refused there
    (its learning rate would be 0 from ``T`` on). MoIL's reference: ``peak = 1e-4``,
    10 % warm-up.

    Example:
        >>> lr = WarmupLinearDecay(1e-3, 10, warmup=0.2)
        >>> lr(0), lr(1), lr(2), lr(9)
        (0.0005, 0.001, 0.001, 0.000125)
    """

    peak: float = attrs.field(converter=_float, validator=_real)
    total_steps: int | None = attrs.field(default=None, converter=_int, validator=_whole)
    warmup: float = attrs.field(default=0.1, converter=_float, validator=_fraction)

    @property
    def bounds(self) -> tuple[float, float]:
        return (0.0, self.peak)

    @property
    def warmup_steps(self) -> int:
        if self.total_steps is None:
            raise _unbound(self, "total_steps=None")
        return min(round(self.warmup * self.total_steps), self.total_steps)

    def for_run(self, steps: int) -> WarmupLinearDecay:
        if steps == 0:
            return self  # a run of no steps reads no learning rate
        if self.total_steps is None:
            return attrs.evolve(self, total_steps=steps)
        if self.total_steps < steps:
            raise ValueError(
                f"{self!r} ends at step {self.total_steps} but the run has {steps} steps: "
                f"from step {self.total_steps} on the learning rate would be 0. Give "
                f"total_steps={steps}, or total_steps=None for the run's length."
            )
        return self

    def __call__(self, step: int) -> float:
        step = _check_step(self, step)
        w, total = self.warmup_steps, self.total_steps
        if step < w:
            return self.peak * (step + 1) / w
        if total == w:
            return self.peak
        return self.peak * max(0.0, (total - step) / (total - w))


@attrs.frozen
class Scaled:
    """``s(t) = factor · schedule(t)`` — e.g. the heads' learning-rate multiplier."""

    schedule: Schedule
    factor: float = attrs.field(converter=_float, validator=_real)

    @property
    def bounds(self) -> tuple[float, float] | None:
        inner = bounds_of(self.schedule)
        return None if inner is None else (self.factor * inner[0], self.factor * inner[1])

    def __call__(self, step: int) -> float:
        return self.factor * float(self.schedule(step))


