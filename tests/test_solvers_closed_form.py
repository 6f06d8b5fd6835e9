"""Laws of the closed-form solvers' building blocks: reduced-rank regression and the
ALS low-rank step (its fast invertible-G route against the general one)."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from moil.solvers import reduced_rank_regression
from moil.solvers.closed_form import _low_rank_step

SETTINGS = settings(derandomize=True, max_examples=40, deadline=None)
SLACK = 1 + 1e-9
dims = st.integers(min_value=1, max_value=8)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _error(x, y, m):
    return float(torch.linalg.matrix_norm(y - x @ m))


@SETTINGS
@given(n=dims, p=dims, q=dims, rank=st.integers(1, 4), deficient=st.booleans(), seed=seeds)
def test_reduced_rank_regression_is_the_constrained_minimum(n, p, q, rank, deficient, seed):
    """Law: M = RRR(X, Y, r) has rank ≤ r and ‖Y − XM‖ ≤ ‖Y − XM'‖ for every rank-≤r M'
    tried (random ones, the truncated least-squares solution, zero) — also when X is
    rank-deficient."""
    g = torch.Generator().manual_seed(seed)
    x = _randn(g, n, p)
    if deficient and p > 1:
        x[:, -1] = x[:, 0]  # a repeated column: X has a null space
    y = _randn(g, n, q)
    m = reduced_rank_regression(x, y, rank)
    assert m.shape == (p, q)
    assert torch.linalg.matrix_rank(m, atol=1e-9) <= rank
    best = _error(x, y, m)
    ols = torch.linalg.pinv(x) @ y
    u, s, vh = torch.linalg.svd(ols, full_matrices=False)
    rivals = [torch.zeros(p, q, dtype=torch.float64), (u[:, :rank] * s[:rank]) @ vh[:rank]]
    rivals += [_randn(g, p, rank) @ _randn(g, rank, q) * 0.3 for _ in range(3)]
    for rival in rivals:
        assert best <= _error(x, y, rival) * SLACK + 1e-12


@SETTINGS
@given(n=dims, q=dims, rank=st.integers(1, 4), seed=seeds)
def test_reduced_rank_regression_with_identity_is_eckart_young(n, q, rank, seed):
    """Law: with X = I the problem is Eckart–Young: ‖Y − M‖² = Σ_{i>r} σ_i(Y)²."""
    g = torch.Generator().manual_seed(seed)
    y = _randn(g, n, q)
    m = reduced_rank_regression(torch.eye(n, dtype=torch.float64), y, rank)
    tail = torch.linalg.svdvals(y)[rank:].square().sum()
    assert_close(torch.linalg.matrix_norm(y - m).square(), tail, rtol=1e-9, atol=1e-10)


@SETTINGS
@given(d=st.integers(2, 8), out=dims, members=st.integers(1, 3), rank=st.integers(1, 3), seed=seeds)
def test_low_rank_step_fast_route_equals_the_regression(d, out, members, rank, seed):
    """Law: for square invertible G, N = (W̄ − W0 G)_r G⁻¹ is the minimiser of
    ‖(W̄ − W0 G) − N G‖ over rank-≤r N: it reaches the reduced-rank regression's error."""
    g = torch.Generator().manual_seed(seed)
    big = torch.eye(d, dtype=torch.float64) + 0.3 * _randn(g, d, 2) @ _randn(g, 2, d)
    tws = [_randn(g, out, d) for _ in range(members)]
    w0s = [_randn(g, out, d) for _ in range(members)]
    for n, tw, w0 in zip(_low_rank_step(big, tws, w0s, rank), tws, w0s):
        y = tw - w0 @ big
        reference = reduced_rank_regression(big.T, y.T, rank).T
        assert torch.linalg.matrix_rank(n, atol=1e-9) <= rank
        assert_close(
            torch.linalg.matrix_norm(y - n @ big), torch.linalg.matrix_norm(y - reference @ big),
            rtol=1e-8, atol=1e-9,
        )


@SETTINGS
@given(seed=seeds, d=st.integers(8, 64))
def test_low_rank_step_nearly_singular_g_is_as_good_as_the_regression(seed, d):
    """G = I − uuᵀ (u a random unit vector) is singular but rounds to an invertible LU:
    the step must notice and still reach the reduced-rank regression's error, finitely."""
    g = torch.Generator().manual_seed(seed)
    u = _randn(g, d, 1)
    u = u / torch.linalg.vector_norm(u)
    big = torch.eye(d, dtype=torch.float64) - u @ u.T
    tw, w0 = _randn(g, 5, d), _randn(g, 5, d)
    (n,) = _low_rank_step(big, [tw], [w0], 2)
    y = tw - w0 @ big
    reference = reduced_rank_regression(big.T, y.T, 2).T
    assert torch.isfinite(n).all() and torch.linalg.matrix_norm(n) < 1e6
    assert torch.linalg.matrix_norm(y - n @ big) <= torch.linalg.matrix_norm(y - reference @ big) * (1 + 1e-6)


def test_low_rank_step_singular_g_takes_the_general_route():
    """A singular G = I + M (M = −e₁e₁ᵀ) has no inverse: the step falls back to the
    minimum-norm regression and stays finite."""
    g = torch.Generator().manual_seed(0)
    big = torch.eye(4, dtype=torch.float64)
    big[0, 0] = 0.0
    tw, w0 = _randn(g, 3, 4), _randn(g, 3, 4)
    (n,) = _low_rank_step(big, [tw], [w0], 2)
    reference = reduced_rank_regression(big.T, (tw - w0 @ big).T, 2).T
    assert torch.isfinite(n).all()
    assert_close(n, reference)


# ----------------------------------------------------------------------------- the fits


def _fit_case(approx, sharing):
    """A two-block q/k/v base (fp32, q/v with bias, k without), a target 0.3 away from it."""
    import moil.approx as ma

    g = torch.Generator().manual_seed(0)
    targets = [f"b{i}.attn.{n}" for i in range(2) for n in ("query", "key", "value")]
    base, target = {}, {}
    for t in targets:
        base[f"{t}.weight"] = torch.randn(6, 5, generator=g)
        target[f"{t}.weight"] = base[f"{t}.weight"] + 0.3 * torch.randn(6, 5, generator=g)
        if not t.endswith("key"):
            base[f"{t}.bias"] = torch.randn(6, generator=g)
            target[f"{t}.bias"] = base[f"{t}.bias"] + 0.3
    adapter = ma.Adapter(approx, targets, ma.Sharing(sharing) if sharing else None)
    return adapter, base, target, adapter.init(base, generator=torch.Generator().manual_seed(1))


def test_every_fitted_tensor_is_contiguous():
    """SVDFit and ALSFit return contiguous tensors in the params' dtype (a transposed view would be
    restored contiguous from a checkpoint, and BLAS then rounds a resumed run differently)."""
    import moil.approx as ma
    from moil.solvers import ALSFit, SVDFit

    cases = [
        (SVDFit(), ma.LowRank(2), None),
        (ALSFit(iterations=2), ma.Hybrid(2), ma.TRANSFORM_KEYS),
        (ALSFit(iterations=2), ma.Hybrid(2, transform_rank=3), None),
        (ALSFit(), ma.Transform(2), ma.TRANSFORM_KEYS),
    ]
    for solver, approx, sharing in cases:
        adapter, base, target, params = _fit_case(approx, sharing)
        fitted = solver.fit(adapter, base, target, params)
        assert fitted.keys() == params.keys()
        for key, value in fitted.items():
            assert value.is_contiguous(), (approx, key, value.stride())
            assert value.dtype == params[key].dtype and value.shape == params[key].shape, key
        assert any(not torch.equal(fitted[k], params[k]) for k in params)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "3", None])
def test_als_iterations_must_be_a_positive_int(bad):
    """ALSFit(iterations=...) is an integer >= 1; the message names the field, the value and a fix."""
    from moil.solvers import ALSFit

    with pytest.raises(ValueError, match=re.escape(f"iterations={bad!r}") + ".*iterations=8"):
        ALSFit(iterations=bad)


def test_als_refuses_the_output_side_by_type():
    """The adapter after the layer has no ALS closed form: OutputTransform / OutputHybrid students
    raise TypeError naming the class and Gradient steps."""
    import moil.approx as ma
    from moil.solvers import ALSFit

    for approx in (ma.OutputHybrid(2), ma.OutputTransform(2), ma.LowRank(2)):
        adapter, base, target, params = _fit_case(approx, None)
        with pytest.raises(TypeError, match=type(approx).__name__):
            ALSFit().fit(adapter, base, target, params)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_fits_name_a_non_finite_weight(bad):
    """Every closed-form fit refuses a target (or base) weight holding NaN/±inf with a
    ValueError naming the fit and the key, instead of a LAPACK error or a NaN student."""
    import moil.approx as ma
    from moil.solvers import ALSFit, SVDFit, WhitenedALSFit, WhitenedSVDFit

    for solver, approx, sharing in [(SVDFit(), ma.LowRank(2), None), (ALSFit(), ma.Hybrid(2), ma.TRANSFORM_KEYS)]:
        adapter, base, target, params = _fit_case(approx, sharing)
        moments = {f"{t}.weight": torch.eye(5) for t in adapter.targets}
        white = WhitenedSVDFit(moments) if isinstance(solver, SVDFit) else WhitenedALSFit(moments)
        key = f"{adapter.targets[1]}.weight"
        for where in ("target", "base"):
            spoiled = {**(target if where == "target" else base)}
            spoiled[key] = spoiled[key].clone()
            spoiled[key][1, 2] = bad
            args = (spoiled, target) if where == "base" else (base, spoiled)
            for fit in (solver, white):
                with pytest.raises(ValueError, match=re.escape(f"{type(fit).__name__}: {where}[{key!r}] holds NaN or inf")):
                    fit.fit(adapter, *args, params)
