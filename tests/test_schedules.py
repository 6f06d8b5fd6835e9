"""Tests for moil.schedules as momentum schedules: ranges, monotonicity, end points, half-lives, errors."""

from __future__ import annotations

import math

import attrs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moil.momentum import (
    REFERENCE_MOMENTUM,
    Constant,
    CosineRamp,
    HalfLife,
    LinearWarmup,
    MomentumTarget,
    half_life_of,
)

SETTINGS = settings(derandomize=True, max_examples=60, deadline=None)

momenta = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
ramp_steps = st.integers(min_value=1, max_value=400)
any_step = st.integers(min_value=0, max_value=10**9)


@st.composite
def ordered_pair(draw):
    a, b = draw(momenta), draw(momenta)
    return min(a, b), max(a, b)


@st.composite
def schedules(draw):
    kind = draw(st.sampled_from(["constant", "cosine", "linear", "halflife"]))
    if kind == "constant":
        return Constant(draw(momenta))
    if kind == "cosine":
        start, end = draw(ordered_pair())
        return CosineRamp(start, end, steps=draw(st.integers(1, 10**6)))
    if kind == "linear":
        return LinearWarmup(draw(momenta), draw(momenta), draw(st.integers(1, 10**6)))
    return HalfLife(draw(st.floats(min_value=1.0, max_value=1e9)))


@SETTINGS
@given(schedule=schedules(), step=any_step)
def test_every_value_is_a_momentum(schedule, step):
    """For every schedule and every step t >= 0: m_t is a float with 0 <= m_t <= 1."""
    m = schedule(step)
    assert isinstance(m, float)
    assert 0.0 <= m <= 1.0


@SETTINGS
@given(pair=ordered_pair(), steps=ramp_steps)
def test_cosine_ramp_monotone_with_end_points(pair, steps):
    """CosineRamp with s <= e: m_0 = s, m_t = e for t >= T, and m_t <= m_{t+1} for all t."""
    start, end = pair
    ramp = CosineRamp(start, end, steps=steps)
    values = [ramp(t) for t in range(steps + 3)]
    assert values[0] == start
    assert values[steps:] == [end] * 3
    assert all(a <= b for a, b in zip(values, values[1:]))


@SETTINGS
@given(pair=ordered_pair(), steps=st.integers(1, 10**6), t=st.integers(0, 2 * 10**6))
def test_cosine_ramp_matches_formula(pair, steps, t):
    """CosineRamp: m_t = e - (e - s)(cos(pi min(t, T)/T) + 1)/2 (BYOL), within 1e-12."""
    start, end = pair
    expected = end - (end - start) * (math.cos(math.pi * min(t, steps) / steps) + 1) / 2
    assert CosineRamp(start, end, steps=steps)(t) == pytest.approx(expected, rel=0, abs=1e-12)


def test_cosine_ramp_midpoint_and_default_end():
    """CosineRamp: m_{T/2} = (s + e)/2, and e defaults to 1 (BYOL's end value)."""
    ramp = CosineRamp(0.996, steps=1000)
    assert ramp.end == 1.0
    assert ramp(500) == pytest.approx((0.996 + 1.0) / 2, rel=0, abs=1e-15)


@SETTINGS
@given(pair=ordered_pair(), steps=ramp_steps)
def test_linear_warmup_monotone_with_end_points(pair, steps):
    """LinearWarmup with s <= e: m_0 = s, m_t = e for t >= T, m_t <= m_{t+1}, linear between."""
    start, end = pair
    warm = LinearWarmup(start, end, steps)
    values = [warm(t) for t in range(steps + 3)]
    assert values[0] == start
    assert values[steps:] == [end] * 3
    assert all(a <= b for a, b in zip(values, values[1:]))
    for t, v in enumerate(values[: steps + 1]):
        assert v == pytest.approx(start + (end - start) * t / steps, rel=0, abs=1e-15)


@SETTINGS
@given(pair=ordered_pair(), steps=ramp_steps)
def test_linear_warmup_decreasing_is_monotone_non_increasing(pair, steps):
    """LinearWarmup with s >= e (a decay): m_0 = s, m_T = e and m_t >= m_{t+1}."""
    low, high = pair
    warm = LinearWarmup(high, low, steps)
    values = [warm(t) for t in range(steps + 2)]
    assert values[0] == high and values[steps] == low
    assert all(a >= b for a, b in zip(values, values[1:]))


@SETTINGS
@given(steps=st.floats(min_value=1.0, max_value=1e6), t=any_step)
def test_half_life_halves_after_its_steps(steps, t):
    """HalfLife(h): m_t = m constant, and m**h = 1/2 (relative error <= 1e-9)."""
    schedule = HalfLife(steps)
    m = schedule(t)
    assert m == schedule(0) == schedule.value
    assert m**steps == pytest.approx(0.5, rel=1e-9)


@SETTINGS
@given(steps=st.integers(min_value=1, max_value=10**7))
def test_half_life_of_inverts_half_life(steps):
    """half_life_of(2^{-1/h}) = h (relative error <= 1e-8 for h <= 1e7)."""
    assert half_life_of(HalfLife(steps)(0)) == pytest.approx(steps, rel=1e-8)


def test_reference_momentum_half_life():
    """The reference m = 0.9996: h = ln(1/2)/ln(m) ≈ 1732.52 updates, and m^h = 1/2."""
    assert REFERENCE_MOMENTUM == 0.9996
    h = half_life_of(REFERENCE_MOMENTUM)
    assert h == pytest.approx(1732.52, abs=0.01)
    assert REFERENCE_MOMENTUM**h == pytest.approx(0.5, rel=1e-12)
    assert HalfLife(h)(0) == pytest.approx(REFERENCE_MOMENTUM, rel=1e-14)


def test_half_life_of_edges():
    """half_life_of(0) = 0 (forgets at once), half_life_of(1) = inf (never moves)."""
    assert half_life_of(0.0) == 0.0
    assert half_life_of(1.0) == math.inf
    assert half_life_of(0.5) == pytest.approx(1.0, rel=1e-15)


@SETTINGS
@given(value=momenta, step=any_step)
def test_constant_is_constant(value, step):
    """Constant(v): m_t = v for every t >= 0."""
    assert Constant(value)(step) == value


@pytest.mark.parametrize(
    ("build", "field", "bad"),
    [
        (lambda: MomentumTarget(Constant(1.2)), "value", "1.2"),
        (lambda: Constant(-0.1), "value", "-0.1"),
        (lambda: Constant(float("nan")), "value", "nan"),
        (lambda: Constant(float("inf")), "value", "inf"),
        (lambda: CosineRamp(0.9, steps=0), "steps", "0"),
        (lambda: CosineRamp(1.5, steps=10), "start", "1.5"),
        (lambda: MomentumTarget(CosineRamp(0.9, 2.0, steps=10)), "end", "2.0"),
        (lambda: CosineRamp(0.99, 0.9, steps=10), "start", "0.99"),
        (lambda: LinearWarmup(0.9, 0.99, 0), "steps", "0"),
        (lambda: LinearWarmup(0.9, 0.99, -5), "steps", "-5"),
        (lambda: LinearWarmup(-1.0, 0.99, 10), "start", "-1.0"),
        (lambda: LinearWarmup(0.9, float("nan"), 10), "end", "nan"),
        (lambda: HalfLife(0.5), "steps", "0.5"),
        (lambda: HalfLife(0), "steps", "0"),
        (lambda: HalfLife(float("inf")), "steps", "inf"),
        (lambda: HalfLife(float("nan")), "steps", "nan"),
    ],
)
def test_invalid_construction_names_field_and_value(build, field, bad):
    """A schedule outside its domain (finite, >= 0; steps >= 1; s <= e) is refused when
    built, and a momentum schedule outside [0, 1] when it enters a MomentumTarget, with a
    ValueError naming the field and the bad value ``field=value``."""
    with pytest.raises(ValueError, match=f"{field}={bad}"):
        build()


@pytest.mark.parametrize(
    "build",
    [
        lambda: Constant("0.9"),
        lambda: Constant(True),
        lambda: CosineRamp(0.9, steps=10.5),
        lambda: LinearWarmup(0.9, 0.99, True),
        lambda: HalfLife("100"),
    ],
)
def test_wrong_types_raise_type_error(build):
    """Non-numeric momenta, bools, and fractional ramp lengths are TypeErrors at construction."""
    with pytest.raises(TypeError):
        build()


@pytest.mark.parametrize(
    "schedule",
    [Constant(0.9), CosineRamp(0.9, steps=10), LinearWarmup(0.9, 0.99, 10), HalfLife(10)],
)
def test_step_domain(schedule):
    """Schedules are defined on integers t >= 0: t = -1 is a ValueError, t = 1.5 a TypeError."""
    with pytest.raises(ValueError, match="step=-1"):
        schedule(-1)
    with pytest.raises(TypeError, match="step=1.5"):
        schedule(1.5)
    assert schedule(np.int64(3)) == schedule(3)


def test_schedules_are_frozen_values():
    """Schedules are immutable values: equal configurations compare and hash equal,
    assignment fails, and numpy numbers are converted to Python numbers."""
    a = CosineRamp(0.9, steps=np.int64(10))
    assert a == CosineRamp(0.9, 1.0, steps=10) and hash(a) == hash(CosineRamp(0.9, steps=10))
    assert type(a.steps) is int and type(Constant(np.float32(0.5)).value) is float
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        a.steps = 3  # type: ignore[misc]
