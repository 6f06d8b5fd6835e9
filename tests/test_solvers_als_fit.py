"""Laws of the fast ALSFit: the mixed-precision truncation and the Gram-matrix transform
step against their SVD references, and the accelerated (extrapolated) rounds never
worse than where they start, nor than a LowRank student of the same rank."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

import moil.approx as ma
from moil.solvers import ALSFit, SVDFit, reduced_rank_regression
from moil.solvers.regression import top, transform_step

SETTINGS = settings(derandomize=True, max_examples=30, deadline=None)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


@SETTINGS
@given(p=st.integers(40, 90), q=st.integers(40, 90), rank=st.integers(1, 8), seed=seeds)
def test_top_is_the_eckart_young_truncation(p, q, rank, seed):
    """Law: Y_r = L Rᵀ from ``top`` reaches the Eckart–Young error Σ_{i>r} s_i², with
    ‖Y_r‖² reported right — also on the float32-proposal route (min(p, q) ≥ 2(r + 16))."""
    g = torch.Generator().manual_seed(seed)
    y = _randn(g, p, q) * torch.linspace(3.0, 0.1, q, dtype=torch.float64)  # a decaying spectrum
    left, right, kept = top(y, rank)
    s = torch.linalg.svdvals(y)
    assert_close(torch.linalg.matrix_norm(y - left @ right.T).square(), s[rank:].square().sum(), rtol=1e-9, atol=1e-12)
    assert_close(kept, s[:rank].square().sum(), rtol=1e-9, atol=1e-12)
    assert torch.linalg.matrix_rank(left @ right.T) <= rank


@SETTINGS
@given(n=st.integers(2, 12), p=st.integers(1, 8), q=st.integers(1, 8), rank=st.integers(1, 4), seed=seeds)
def test_transform_step_reaches_the_regression_error(n, p, q, rank, seed):
    """Law: the Cholesky / Gram route of the transform step attains the reduced-rank
    regression's error and reports it (‖Y − X P Qᵀ‖² = returned error²)."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [_randn(g, n, p) for _ in range(2)], [_randn(g, n, q) for _ in range(2)]
    (a, b), error, _ = transform_step(xs, ys, rank)
    x, y = torch.cat(xs), torch.cat(ys)
    reference = (y - x @ reduced_rank_regression(x, y, rank)).square().sum()
    assert_close((y - x @ a @ b.T).square().sum(), reference, rtol=1e-8, atol=1e-10)
    assert_close(error, reference, rtol=1e-8, atol=1e-10)


def _case(seed: int, out: int, inp: int, members: int):
    """``members`` targets sharing one transform, float64, a random target around W0."""
    g = torch.Generator().manual_seed(seed)
    names = [f"b0.attn.{n}" for n in ("query", "key", "value")[:members]]
    base, target = {}, {}
    for t in names:
        base[f"{t}.weight"] = _randn(g, out, inp)
        target[f"{t}.weight"] = base[f"{t}.weight"] + 0.5 * _randn(g, out, inp)
        base[f"{t}.bias"], target[f"{t}.bias"] = _randn(g, out), _randn(g, out)
    return names, base, target


def _distance(adapter, params, base, target) -> float:
    merged = adapter.merge(params, base)
    return math.sqrt(sum(float((target[k] - merged[k]).square().sum()) for k in merged if k.endswith(".weight")))


@SETTINGS
@given(out=st.integers(2, 10), inp=st.integers(2, 10), members=st.integers(1, 3), rank=st.integers(1, 3), seed=seeds)
def test_als_never_worse_than_its_start_nor_than_lowrank(out, inp, members, rank, seed):
    """Laws: (1) the ALS distance is ≤ the distance at its init, from a random start;
    (2) from the fresh init (M = 0) it is ≤ the LowRank(r) Eckart–Young fit's (Hybrid ⊇
    LowRank at the same r); (3) more rounds are never worse (the rounds kept are a prefix)."""
    rank = min(rank, out, inp)
    names, base, target = _case(seed, out, inp, members)
    hybrid = ma.Adapter(ma.Hybrid(rank), names, ma.Sharing(ma.TRANSFORM_KEYS))
    fresh = hybrid.init(base, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    start = {k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in fresh.items()}
    slack = 1 + 1e-9
    fitted = ALSFit().fit(hybrid, base, target, start)
    assert _distance(hybrid, fitted, base, target) <= _distance(hybrid, start, base, target) * slack

    low = ma.Adapter(ma.LowRank(rank), names)
    svd = SVDFit().fit(low, base, target, low.init(base, generator=torch.Generator().manual_seed(0)))
    one = _distance(hybrid, ALSFit(iterations=1).fit(hybrid, base, target, fresh), base, target)
    four = _distance(hybrid, ALSFit(iterations=4, tolerance=0).fit(hybrid, base, target, fresh), base, target)
    assert one <= _distance(low, svd, base, target) * slack + 1e-12
    assert four <= one * slack + 1e-12


def test_tolerance_must_be_a_finite_non_negative_number():
    """ALSFit(tolerance=...) is a finite number ≥ 0; the message names the field and value."""
    import pytest

    for bad in (-1e-3, float("inf"), float("nan"), True, "1e-6", None):
        with pytest.raises(ValueError, match=f"tolerance={bad!r}"):
            ALSFit(tolerance=bad)
    assert ALSFit(tolerance=0).tolerance == 0


# ---------------------------------------- Eckart–Young and per-round descent, awkward cases

FIT_TOL = {torch.float64: 1e-9, torch.float32: 1e-4}


@st.composite
def fit_cases(draw, *, hybrid: bool):
    """q/k/v-like targets reading one input of width ``in``, each of its own ``out`` (GQA:
    k/v narrower than q), sides from 1 to 7 (``1 × n``, ``n × 1``), ranks up to the smallest
    ``min(out, in)`` (``transform_rank`` apart from ``rank``), the transform shared or not,
    float64/float32, ``W0`` zero or random, the update ``Δ`` full-rank or rank-deficient."""
    inp, members = draw(st.integers(1, 7)), draw(st.integers(1, 3))
    outs = draw(st.lists(st.integers(1, 7), min_size=members, max_size=members))
    limit = min(min(outs), inp)
    rank, r_t = draw(st.integers(1, limit)), draw(st.integers(1, limit))
    dtype = draw(st.sampled_from(list(FIT_TOL)))
    g = torch.Generator().manual_seed(draw(seeds))
    zero_w0, delta_rank = draw(st.booleans()), draw(st.integers(0, limit))
    names, base, target = [f"blk.attn.{n}" for n in ("query", "key", "value")[:members]], {}, {}
    for name, out in zip(names, outs):
        w0 = torch.zeros(out, inp, dtype=torch.float64) if zero_w0 else _randn(g, out, inp)
        delta = _randn(g, out, delta_rank) @ _randn(g, delta_rank, inp)  # rank ≤ delta_rank
        base[f"{name}.weight"], target[f"{name}.weight"] = w0.to(dtype), (w0 + delta).to(dtype)
        base[f"{name}.bias"], target[f"{name}.bias"] = _randn(g, out).to(dtype), _randn(g, out).to(dtype)
    approx = ma.Hybrid(rank, transform_rank=r_t) if hybrid else ma.LowRank(rank)
    sharing = ma.Sharing(ma.TRANSFORM_KEYS) if hybrid and draw(st.booleans()) else None
    return ma.Adapter(approx, names, sharing), base, target, dtype


def _tail(base, target, names, rank) -> float:
    """``Σ_t Σ_{i>r} σ_i(W̄_t − W0_t)²``, the Eckart–Young floor, in float64."""
    return sum(float((torch.linalg.svdvals(target[f"{t}.weight"].double() - base[f"{t}.weight"].double())[rank:] ** 2).sum())
               for t in names)


@settings(derandomize=True, max_examples=60, deadline=None)
@given(case=fit_cases(hybrid=False), seed=seeds)
def test_svd_fit_is_the_eckart_young_optimum_on_awkward_cases(case, seed):
    """Laws: SVDFit's ``Σ_t ‖W̄_t − Ŵ_t‖²`` equals the tail ``Σ_{i>r} σ_i²`` of each update's
    singular values (so 0 when ``rank(Δ) ≤ r``), and no other rank-r student beats it: a
    random rank-r ``B A`` and rank-r perturbations of the optimum are never closer."""
    adapter, base, target, dtype = case
    names, rank = adapter.targets, adapter.approx.rank
    fitted = SVDFit().fit(adapter, base, target, adapter.init(base))
    best, floor = _distance(adapter, fitted, base, target) ** 2, _tail(base, target, names, rank)
    tol = FIT_TOL[dtype] * (1 + sum(float(target[f"{t}.weight"].double().square().sum()) for t in names))
    assert abs(best - floor) <= tol
    g = torch.Generator().manual_seed(seed)
    others = [{k: _randn(g, *v.shape).to(dtype) for k, v in fitted.items()},
              {k: v + 0.1 * _randn(g, *v.shape).to(dtype) for k, v in fitted.items()}]
    for other in others:
        assert _distance(adapter, other, base, target) ** 2 >= floor - tol


@settings(derandomize=True, max_examples=40, deadline=None)
@given(case=fit_cases(hybrid=True), seed=seeds)
def test_als_never_increases_its_objective_per_round_on_awkward_cases(case, seed):
    """Laws, from a random start and from the fresh init: the weight error after k rounds
    (tolerance 0) is non-increasing in k = 1 … 4 and ≤ the start's; from the init it is ≤
    the LowRank(r) Eckart–Young floor (Hybrid ⊇ LowRank); every fitted tensor is finite,
    in the params' dtype and shape."""
    adapter, base, target, dtype = case
    fresh = adapter.init(base, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    start = {k: v + 0.3 * _randn(g, *v.shape).to(dtype) for k, v in fresh.items()}
    scale = 1 + sum(float(target[f"{t}.weight"].double().square().sum()) for t in adapter.targets)
    tol = FIT_TOL[dtype] * scale
    for begin in (start, fresh):
        errors = [_distance(adapter, begin, base, target) ** 2]
        for k in range(1, 5):
            fitted = ALSFit(iterations=k, tolerance=0).fit(adapter, base, target, begin)
            assert all(v.isfinite().all() and v.dtype == dtype and v.shape == begin[n].shape for n, v in fitted.items())
            errors.append(_distance(adapter, fitted, base, target) ** 2)
        assert all(b <= a + tol for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] <= _tail(base, target, adapter.targets, adapter.approx.rank) + tol
