"""Tests for moil.momentum.ema: the pure EMA step and the MomentumTarget component."""

from __future__ import annotations

import math

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moil.momentum import (
    REFERENCE_MOMENTUM,
    Constant,
    HalfLife,
    LinearWarmup,
    MomentumState,
    MomentumTarget,
    accumulation_dtype,
    ema_update,
    half_life_of,
)

SETTINGS = settings(derandomize=True, max_examples=40, deadline=None)

shapes = st.lists(st.integers(min_value=1, max_value=6), min_size=0, max_size=3).map(tuple)
momenta = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def _params(seed: int, shapes_by_key: dict[str, tuple[int, ...]], dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
        for k, shape in shapes_by_key.items()
    }


def _pair(seed: int = 0, dtype=torch.float32):
    layout = {"q.weight": (5, 3), "q.bias": (5,), "k.weight": (4, 3)}
    return _params(seed, layout, dtype), _params(seed + 1, layout, dtype)


def _distance(a: dict, b: dict) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.cat([(a[k] - b[k]).double().flatten() for k in a]))


# ----------------------------------------------------------------------------- ema_update


def test_zero_momentum_copies_source_exactly():
    """m = 0: t' = 0·t + 1·s = s, bit for bit, as new tensors."""
    target, source = _pair()
    out = ema_update(target, source, 0.0)
    assert list(out) == list(target)
    for k in source:
        assert torch.equal(out[k], source[k])
        assert out[k].data_ptr() != source[k].data_ptr()


def test_unit_momentum_keeps_target_exactly():
    """m = 1: t' = 1·t + 0·s = t, bit for bit, as new tensors."""
    target, source = _pair()
    out = ema_update(target, source, 1)
    for k in target:
        assert torch.equal(out[k], target[k])
        assert out[k].data_ptr() != target[k].data_ptr()


@pytest.mark.parametrize("m", [0.0, 0.3, 0.9996, 1.0])
def test_constant_source_is_a_fixed_point(m):
    """t = s  ⇒  m·s + (1 − m)·s = s: the target stays on a constant source."""
    source, _ = _pair(seed=3)
    target = {k: v.clone() for k, v in source.items()}
    for _ in range(5):
        target = ema_update(target, source, m)
    for k in source:
        torch.testing.assert_close(target[k], source[k], rtol=0, atol=1e-6)


@SETTINGS
@given(shape_a=shapes, shape_b=shapes, m=momenta, seed=seeds)
def test_distance_shrinks_by_factor_m(shape_a, shape_b, m, seed):
    """Constant source s: t_{k+1} − s = m (t_k − s), hence ‖t_{k+1} − s‖ = m ‖t_k − s‖
    (float64, relative 1e-10, absolute 1e-12), for three consecutive steps."""
    layout = {"a": shape_a, "b": shape_b}
    target, source = _params(seed, layout), _params(seed + 1, layout)
    for _ in range(3):
        before = _distance(target, source)
        target = ema_update(target, source, m)
        torch.testing.assert_close(_distance(target, source), m * before, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("dtype", "tol"),
    [(torch.float64, 1e-12), (torch.float32, 1e-6), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)],
)
@pytest.mark.parametrize("m", [0.1, 0.5, 0.99])
def test_matches_formula_across_dtypes(dtype, tol, m):
    """t' = m·t + (1 − m)·s elementwise, kept in the input dtype; compared with the formula
    evaluated in float64 on the same (rounded) inputs, tolerance scaled to the dtype's eps."""
    target, source = _pair(seed=7, dtype=dtype)
    out = ema_update(target, source, m)
    for k in target:
        assert out[k].dtype == dtype and out[k].shape == target[k].shape
        expected = m * target[k].double() + (1 - m) * source[k].double()
        torch.testing.assert_close(out[k].double(), expected, rtol=tol, atol=tol)


def test_mixed_dtypes_in_one_dict():
    """Each key is averaged in its own dtype (grouped per device/dtype); key order is kept."""
    target = {"w": torch.zeros(3), "b": torch.zeros(2, dtype=torch.float64), "v": torch.zeros(1)}
    source = {"v": torch.ones(1), "b": torch.ones(2, dtype=torch.float64), "w": torch.ones(3)}
    out = ema_update(target, source, 0.25)
    assert list(out) == ["w", "b", "v"]
    for k in target:
        assert out[k].dtype == target[k].dtype
        torch.testing.assert_close(out[k], torch.full_like(target[k], 0.75), rtol=0, atol=1e-7)


def test_inputs_are_not_mutated():
    """ema_update is pure: input dicts keep their keys and tensor objects, and every input
    tensor keeps its values, storage (data_ptr) and version counter."""
    target, source = _pair(seed=11)
    target["q.weight"].requires_grad_(True)
    snapshot = {
        name: {k: (v, v.detach().clone(), v.data_ptr(), v._version) for k, v in d.items()}
        for name, d in (("target", target), ("source", source))
    }
    out = ema_update(target, source, 0.7)
    for name, d in (("target", target), ("source", source)):
        assert list(d) == list(snapshot[name])
        for k, (obj, copy, ptr, version) in snapshot[name].items():
            assert d[k] is obj
            torch.testing.assert_close(d[k].detach(), copy, rtol=0, atol=0)
            assert d[k].data_ptr() == ptr and d[k]._version == version
            assert out[k].data_ptr() != ptr
    assert target["q.weight"].requires_grad


def test_output_is_detached_from_autograd():
    """The target is not differentiated through: outputs do not require grad even when the
    source is a trainable nn.Parameter."""
    target, source = _pair()
    source = {k: torch.nn.Parameter(v) for k, v in source.items()}
    out = ema_update(target, source, 0.5)
    assert not any(v.requires_grad for v in out.values())
    assert all(v.grad_fn is None for v in out.values())


def test_empty_dicts():
    """The EMA of no tensors is no tensors: ema_update({}, {}, m) == {}."""
    assert ema_update({}, {}, 0.5) == {}


def test_key_mismatch_names_missing_and_extra_keys():
    """Keys(target) ≠ Keys(source) is a KeyError listing both set differences."""
    target, source = _pair()
    source = dict(source)
    del source["q.bias"]
    source["v.weight"] = torch.zeros(1)
    pattern = r"missing from source: \['q.bias'\].*extra in source.*'v.weight'"
    with pytest.raises(KeyError, match=pattern):
        ema_update(target, source, 0.5)


@pytest.mark.parametrize(
    ("change", "what", "values"),
    [
        (lambda t: t.reshape(3, 5), "shape", r"\(5, 3\).*\(3, 5\)"),
        (lambda t: t.double(), "dtype", r"torch.float32.*torch.float64"),
        (lambda t: torch.empty_like(t, device="meta"), "device", r"cpu.*meta"),
    ],
)
def test_tensor_mismatch_names_key_and_values(change, what, values):
    """A per-key shape, dtype or device mismatch is a ValueError naming the key and both values."""
    target, source = _pair()
    source = {**source, "q.weight": change(source["q.weight"])}
    with pytest.raises(ValueError, match=rf"{what} mismatch at key 'q.weight'.*{values}"):
        ema_update(target, source, 0.5)


def test_integer_tensors_are_refused():
    """An average of integer tensors is not representable: TypeError naming the key."""
    t = {"count": torch.zeros(2, dtype=torch.int64)}
    with pytest.raises(TypeError, match="'count'.*torch.int64"):
        ema_update(t, {"count": torch.ones(2, dtype=torch.int64)}, 0.5)


@pytest.mark.parametrize("bad", [1.2, -0.5, float("nan"), float("inf")])
def test_momentum_outside_unit_interval_raises(bad):
    """m ∉ [0, 1] or non-finite is a ValueError that shows the bad value and the range."""
    target, source = _pair()
    pattern = rf"momentum must be a finite number in \[0, 1\], got momentum={bad}"
    with pytest.raises(ValueError, match=pattern):
        ema_update(target, source, bad)


def test_non_numeric_momentum_raises():
    """m must be a real number: a string or a bool is a TypeError."""
    target, source = _pair()
    for bad in ("0.5", True):
        with pytest.raises(TypeError, match="momentum"):
            ema_update(target, source, bad)


# -------------------------------------------------------------------------- MomentumTarget


def test_init_clones_the_teacher():
    """init: W̄_0 = W_0 as independent copies, step 0; later in-place changes of the teacher
    do not reach the state."""
    teacher, _ = _pair(seed=5)
    teacher = {k: torch.nn.Parameter(v) for k, v in teacher.items()}
    state = MomentumTarget(0.9).init(teacher)
    assert isinstance(state, MomentumState) and state.step == 0
    copies = {k: v.detach().clone() for k, v in teacher.items()}
    with torch.no_grad():
        for v in teacher.values():
            v.add_(1.0)
    for k in teacher:
        torch.testing.assert_close(state.target[k], copies[k], rtol=0, atol=0)
        assert not state.target[k].requires_grad


def test_update_uses_schedule_of_step_and_increments_step():
    """update(state_k) = (ema_update(W̄_k, W, schedule(k)), k + 1) and
    momentum(state_k) = schedule(k); the old state is left as it was."""
    schedule = LinearWarmup(0.2, 0.8, 3)
    mt = MomentumTarget(schedule)
    start, teacher = _pair(seed=9)
    state = mt.init(start)
    for k in range(5):
        assert mt.momentum(state) == schedule(k)
        before = {n: v.clone() for n, v in state.target.items()}
        new = mt.update(state, teacher)
        assert new.step == k + 1
        expected = ema_update(before, teacher, schedule(k))
        for n in before:
            torch.testing.assert_close(new.target[n], expected[n], rtol=0, atol=0)
            torch.testing.assert_close(state.target[n], before[n], rtol=0, atol=0)
        state = new


@SETTINGS
@given(m=momenta, k=st.integers(min_value=0, max_value=30), seed=seeds, shape=shapes)
def test_constant_schedule_closed_form(m, k, seed, shape):
    """k updates with Constant(m) towards a constant source s: t_k = m^k t_0 + (1 − m^k) s
    (float64, tolerance 1e-10)."""
    mt = MomentumTarget(Constant(m))
    t0, source = _params(seed, {"w": shape}), _params(seed + 1, {"w": shape})
    state = mt.init(t0)
    for _ in range(k):
        state = mt.update(state, source)
    assert state.step == k
    expected = m**k * t0["w"] + (1 - m**k) * source["w"]
    torch.testing.assert_close(state.target["w"], expected, rtol=1e-10, atol=1e-10)


def test_schedule_argument_forms():
    """A number m is the schedule Constant(m); a callable is kept; anything else is refused;
    an m outside [0, 1] fails at construction; the component is frozen."""
    assert MomentumTarget(0.99).schedule == Constant(0.99)
    assert MomentumTarget(1).schedule == Constant(1.0)
    ramp = LinearWarmup(0.9, 0.99, 10)
    assert MomentumTarget(ramp).schedule is ramp
    with pytest.raises(TypeError, match="schedule"):
        MomentumTarget("0.99")
    with pytest.raises(ValueError, match="value=1.5"):
        MomentumTarget(1.5)
    mt = MomentumTarget(0.9)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        mt.schedule = Constant(0.5)  # type: ignore[misc]


def test_bad_schedule_value_fails_at_update():
    """A user schedule returning m ∉ [0, 1] is caught by the update with the value shown."""
    mt = MomentumTarget(lambda step: 1.0 + step)
    state = mt.init({"w": torch.zeros(2)})
    state = mt.update(state, {"w": torch.ones(2)})  # m = 1: fine
    with pytest.raises(ValueError, match="momentum=2.0"):
        mt.update(state, {"w": torch.ones(2)})


# ---------------------------------------------------- the closed form on awkward inputs

LOW = (torch.bfloat16, torch.float16)
ALL_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
# Relative accuracy of the accumulated target (bf16/fp16 teachers accumulate in float32).
ACC_TOL = {torch.float64: 1e-12, torch.float32: 2e-6}
step_momenta = st.one_of(
    st.sampled_from([0.0, 1.0, 0.5, 0.9, 0.99, REFERENCE_MOMENTUM]),
    st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
)


@settings(derandomize=True, max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(ALL_DTYPES),
    momenta_=st.lists(step_momenta, min_size=0, max_size=25),
    shape=st.sampled_from([(1,), (1, 7), (7, 1), (3, 4)]),
    transposed=st.booleans(),
    seed=seeds,
)
def test_target_after_n_steps_is_the_closed_form_weighted_sum(dtype, momenta_, shape, transposed, seed):
    """Law: after updates with momenta m_0 … m_{n−1} towards teachers W_0 … W_{n−1},
    W̄_n = (Π_k m_k) W̄_0 + Σ_k (1 − m_k) (Π_{j>k} m_j) W_k — for any schedule (0 and 1
    included), any teacher dtype (bf16/fp16 kept in float32, :func:`accumulation_dtype`)
    and non-contiguous (transposed) teacher tensors; compared in float64 with the formula
    on the teachers' rounded values."""
    n = len(momenta_)
    mt = MomentumTarget(lambda k: momenta_[k])
    g = torch.Generator().manual_seed(seed)

    def draw():
        flip = transposed and len(shape) == 2
        w = torch.randn(shape[::-1] if flip else shape, generator=g, dtype=torch.float64).to(dtype)
        return w.mT if flip else w  # a transposed view: non-contiguous

    start, teachers = draw(), [draw() for _ in range(n)]
    state = mt.init({"w": start})
    for w in teachers:
        state = mt.update(state, {"w": w})
    acc = accumulation_dtype(dtype)
    assert state.step == n and state.target["w"].dtype == acc and state.target["w"].shape == shape
    want = math.prod(momenta_) * start.double()
    for k, w in enumerate(teachers):
        want = want + (1 - momenta_[k]) * math.prod(momenta_[k + 1 :]) * w.double()
    tol = ACC_TOL[acc] * max(1, n)
    torch.testing.assert_close(state.target["w"].double(), want, rtol=tol, atol=tol)
    if n and momenta_[-1] == 0.0:  # momentum 0: the target *is* the last teacher, exactly
        assert torch.equal(state.target["w"], teachers[-1].to(acc))


@pytest.mark.parametrize("dtype", LOW)
def test_slow_momentum_keeps_moving_in_low_precision(dtype):
    """Law: towards a fixed teacher W = 1 from W̄ = 0, n updates of the reference m = 0.9996
    give 1 − mⁿ. A bf16/fp16 average would stall (bf16 sticks at 0.125 for n = 1000, each
    step below half an ulp); the float32 accumulator follows the formula."""
    mt = MomentumTarget(REFERENCE_MOMENTUM)
    state = mt.init({"w": torch.zeros(3, dtype=dtype)})
    for _ in range(1000):
        state = mt.update(state, {"w": torch.ones(3, dtype=dtype)})
    want = torch.full((3,), 1 - REFERENCE_MOMENTUM**1000, dtype=torch.float64)
    torch.testing.assert_close(state.target["w"].double(), want, rtol=1e-5, atol=0)


def test_accumulation_dtype_and_what_ema_update_accepts():
    """bf16/fp16 accumulate in float32, float32/float64 in themselves; ema_update takes a
    teacher of the dtype a target accumulates (exactly upcast) but refuses a wider one."""
    assert [accumulation_dtype(d) for d in ALL_DTYPES] == [torch.float64, torch.float32, torch.float32, torch.float32]
    target = {"w": torch.zeros(2)}
    out = ema_update(target, {"w": torch.ones(2, dtype=torch.bfloat16)}, 0.25)
    assert out["w"].dtype == torch.float32 and torch.equal(out["w"], torch.full((2,), 0.75))
    with pytest.raises(ValueError, match="dtype mismatch at key 'w'"):
        ema_update({"w": torch.zeros(2, dtype=torch.bfloat16)}, {"w": torch.ones(2)}, 0.5)


@settings(derandomize=True, max_examples=30, deadline=None)
@given(
    h=st.one_of(st.integers(1, 400), st.floats(min_value=1.0, max_value=1e6, allow_nan=False)),
    dtype=st.sampled_from((torch.float64, torch.float32, torch.bfloat16)),
)
def test_half_life_halves_the_distance(h, dtype):
    """Law: HalfLife(h) is m = 2^(−1/h): m^h = 1/2 and half_life_of(m) = h; for an integer h,
    h updates towards a fixed teacher halve the target's distance to it (any teacher dtype)."""
    m = HalfLife(h)(0)
    assert m**h == pytest.approx(0.5, rel=1e-9)
    assert half_life_of(m) == pytest.approx(h, rel=1e-6)
    if isinstance(h, int) and h <= 60:
        mt = MomentumTarget(HalfLife(h))
        state = mt.init({"w": torch.zeros(4, dtype=dtype)})
        for _ in range(h):
            state = mt.update(state, {"w": torch.ones(4, dtype=dtype)})
        torch.testing.assert_close(state.target["w"].double(), torch.full((4,), 0.5, dtype=torch.float64), rtol=1e-5, atol=0)
