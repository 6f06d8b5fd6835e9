"""Tests for moil.testing: the strategies draw what they claim, and check_approximation passes
the built-ins and catches each kind of broken approximation."""

from __future__ import annotations

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import moil.testing as mt
from moil.approx import Approximation, Hybrid, LowRank, OutputHybrid, OutputTransform, Transform
from moil.testing import (
    LawViolation,
    adapter_params,
    approximations,
    check_approximation,
    weight_shapes,
    weights,
)

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None)


# --------------------------------------------------------------------------- strategies


@SETTINGS
@given(shape=weight_shapes(2, 5))
def test_weight_shapes_stay_in_bounds(shape):
    """weight_shapes(lo, hi) draws (out, in) with lo ≤ out, in ≤ hi."""
    assert len(shape) == 2 and all(2 <= n <= 5 for n in shape)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_weights_are_reproducible_and_typed(dtype):
    """weights(shape, dtype, scale) has that shape and dtype, and two derandomized runs draw the
    same tensors."""

    def draw_all() -> list[torch.Tensor]:
        seen = []

        @settings(max_examples=5, deadline=None, derandomize=True, database=None)
        @given(w=weights((3, 4), dtype, scale=2.0))
        def collect(w):
            assert w.shape == (3, 4) and w.dtype == dtype and w.isfinite().all()
            seen.append(w)

        collect()
        return seen

    first, second = draw_all(), draw_all()
    assert len(first) == len(second) > 1
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@SETTINGS
@given(w=weights(weight_shapes(1, 4)))
def test_weights_accepts_a_shape_strategy(w):
    """weights(weight_shapes(...)) draws a shape, then a tensor of that shape."""
    assert w.ndim == 2 and all(1 <= n <= 4 for n in w.shape)


@SETTINGS
@given(approx=approximations(max_rank=3))
def test_approximations_are_built_ins_within_max_rank(approx):
    """approximations(max_rank) draws a LowRank, (Output)Transform or (Output)Hybrid with every
    rank in [1, max_rank]."""
    built_ins = (LowRank, Transform, OutputTransform, Hybrid, OutputHybrid)
    assert isinstance(approx, built_ins) and isinstance(approx, Approximation)
    assert 1 <= approx.rank <= 3
    assert getattr(approx, "transform_rank", None) in (None, 1, 2, 3)


@SETTINGS
@given(
    data=st.data(),
    approx=approximations(max_rank=3),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_adapter_params_match_init_but_are_not_init(data, approx, dtype):
    """adapter_params(approx, w0) has init's keys and shapes, w0's dtype, and no all-zero tensor."""
    w0 = data.draw(weights(weight_shapes(3, 6), dtype))
    p = data.draw(adapter_params(approx, w0))
    init = approx.init(w0)
    assert list(p) == list(init)
    for k in init:
        assert p[k].shape == init[k].shape and p[k].dtype == dtype
        assert p[k].count_nonzero()


# --------------------------------------------------------------- check_approximation passes


@pytest.mark.parametrize(
    "approx",
    [
        LowRank(2),
        OutputTransform(1),
        Hybrid(2, transform_rank=1),
        OutputHybrid(1, scale=-1.0),
    ],
    ids=repr,
)
def test_built_ins_pass_in_low_precision(approx):
    """The contract laws hold for the built-ins on float32, bfloat16 and float16 weights too."""
    check_approximation(
        approx, max_examples=10, dtypes=(torch.float32, torch.bfloat16, torch.float16)
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("approx", [LowRank(2), OutputTransform(2), Hybrid(2)], ids=repr)
def test_built_ins_pass_on_cuda(approx):
    """On a CUDA w0 (CPU generators), every law holds, device included, in float32 and bfloat16."""
    check_approximation(
        approx, max_examples=5, dtypes=(torch.float32, torch.bfloat16), device="cuda"
    )


def test_min_features_respects_rank_attributes():
    """Widths are drawn ≥ max(rank, transform_rank, min_features): init never sees a narrower w0."""

    @attrs.frozen
    class Recording(Hybrid):
        seen: list = attrs.field(factory=list, eq=False, repr=False)

        def init(self, w0, b0=None, *, generator=None):
            self.seen.append(min(w0.shape))
            return super().init(w0, b0, generator=generator)

    for approx, kwargs, lowest in [
        (Recording(3), {}, 3),
        (Recording(1, transform_rank=4), {}, 4),
        (Recording(1), {"min_features": 5}, 5),
    ]:
        check_approximation(approx, max_examples=5, **kwargs)
        assert min(approx.seen) == lowest


def test_public_api_is_exported():
    """moil.testing exports exactly its documented names."""
    assert sorted(mt.__all__) == sorted(
        [
            "LAWS",
            "LawViolation",
            "Reference",
            "adapter_params",
            "approximations",
            "check_approximation",
            "seeds",
            "weight_shapes",
            "weights",
        ]
    )
    assert all(hasattr(mt, n) for n in mt.__all__)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_examples": 0}, {"dtypes": ()}, {"dtypes": (torch.int64,)}, {"reference": 3}],
)
def test_bad_arguments_raise_value_error(kwargs):
    """check_approximation validates its own arguments (ValueError naming the argument)."""
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        check_approximation(LowRank(1), **kwargs)


# ---------------------------------------------------------- check_approximation catches bugs


@attrs.frozen
class NotIdentity(LowRank):
    """B starts random: Ŵ ≠ W0 at init."""

    def init(self, w0, b0=None, *, generator=None):
        p = super().init(w0, b0, generator=generator)
        return {**p, "lora_b": torch.ones_like(p["lora_b"])}


@attrs.frozen
class BiasFromNothing(LowRank):
    """Adds 1 to the bias even at init (and invents one when b0 is None)."""

    def bias(self, params, w0, b0):
        return torch.ones(w0.shape[0], dtype=w0.dtype) if b0 is None else b0 + 1


@attrs.frozen
class LyingCount(LowRank):
    """Claims one parameter more than init makes."""

    def num_params(self, out_features, in_features):
        return super().num_params(out_features, in_features) + 1


@attrs.frozen
class AlwaysFloat32(LowRank):
    """Returns Ŵ in float32 whatever w0's dtype."""

    def weight(self, params, w0):
        return super().weight(params, w0).float()


@attrs.frozen
class IgnoresGenerator(LowRank):
    """Draws A from the global RNG: two equally seeded generators give different params."""

    def init(self, w0, b0=None, *, generator=None):
        return super().init(w0, b0, generator=None)


@attrs.frozen
class MutatesParams(LowRank):
    """Scales B in place while computing Ŵ."""

    def weight(self, params, w0):
        params["lora_b"].mul_(2.0)
        return super().weight(params, w0)


@attrs.frozen
class NaNGradient(LowRank):
    """Ŵ = W0 + B A + √(0·B²): the forward is right, ∂√u/∂u at u = 0 is infinite, so the gradient
    is NaN."""

    def weight(self, params, w0):
        return super().weight(params, w0) + torch.sqrt(0.0 * params["lora_b"].square()).sum()


@attrs.frozen
class SharesOutputKey(LowRank):
    """Declares lora_b (out, r) shareable although its shape depends on out."""

    shareable = frozenset({"lora_b"})


@attrs.frozen
class Raises(LowRank):
    """weight raises on non-square weights."""

    def weight(self, params, w0):
        if w0.shape[0] != w0.shape[1]:
            raise RuntimeError("not square")
        return super().weight(params, w0)


def forgets_scale(params, w0, b0, x):
    """A reference that drops LowRank's scale s = 2."""
    y = x @ w0.T + (x @ params["lora_a"].T) @ params["lora_b"].T
    return y if b0 is None else y + b0


@pytest.mark.parametrize(
    "approx,kwargs,law",
    [
        (NotIdentity(2), {}, "identity at init"),
        (BiasFromNothing(2), {}, "identity at init"),
        (LyingCount(2), {}, "num_params"),
        (AlwaysFloat32(2), {}, "follows w0"),
        (IgnoresGenerator(2), {}, "deterministic init"),
        (SharesOutputKey(2), {}, "shareable"),
        (MutatesParams(2), {}, "no mutation"),
        (NaNGradient(2), {}, "finite gradients"),
        (Raises(1), {}, "follows w0"),  # the first law to call weight() reports the exception
        (LowRank(2, scale=2.0), {"reference": forgets_scale}, "factored == materialised"),
    ],
    ids=lambda v: v.__class__.__name__ if not isinstance(v, (dict, str)) else None,
)
def test_broken_approximations_fail_naming_the_law(approx, kwargs, law):
    """Each broken approximation raises an AssertionError (LawViolation) whose message names the
    broken law and the example's w0."""
    with pytest.raises(AssertionError, match=f"law '{law}' failed for .* with w0 of shape") as info:
        check_approximation(approx, max_examples=10, **kwargs)
    assert isinstance(info.value, LawViolation)


def test_missing_methods_fail_the_protocol_law():
    """An object without weight/bias/num_params/shapes/weight_and_bias fails the 'protocol' law,
    listing what is missing."""

    class Half:
        def init(self, w0, b0=None, *, generator=None):
            return {}

    missing = r"\['weight', 'bias', 'num_params', 'shapes', 'weight_and_bias'\]"
    with pytest.raises(AssertionError, match=r"law 'protocol'.*" + missing):
        check_approximation(Half())
