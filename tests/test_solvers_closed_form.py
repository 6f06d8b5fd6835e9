"""Laws of the closed-form solvers' building blocks: reduced-rank regression and the
ALS low-rank step (its fast invertible-G route against the general one)."""

from __future__ import annotations

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
