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
