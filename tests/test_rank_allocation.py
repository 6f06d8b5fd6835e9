"""Budgeted rank allocation (moil.solvers.allocation).

Laws checked:
* the allocation respects the budget and gives every target ``min_rank ≤ r_t ≤ k_t``;
* its total error is ≤ the uniform allocation's that fits the same budget (any costs);
* with equal costs it is the exact optimum (checked against every allocation by brute force);
* ``allocation_error`` is the Eckart–Young error ``Σ_t ‖Δ_t − (Δ_t)_{r_t}‖_F²``.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moil.solvers import allocate_ranks, allocation_error, rank_costs, spectra


def _spectra(seed: int, sizes: list[int]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Different decay per target: the case where a uniform rank wastes budget.
    return {
        f"t{i}": torch.sort(torch.rand(k, generator=g, dtype=torch.float64) ** (1 + 3 * i % 4), descending=True).values
        for i, k in enumerate(sizes)
    }


cases = st.tuples(
    st.lists(st.integers(1, 5), min_size=1, max_size=4),  # k_t per target
    st.lists(st.integers(1, 9), min_size=4, max_size=4),  # costs
    st.integers(0, 60),  # budget above the min-rank floor
    st.integers(0, 10_000),
)


def _uniform_error(s, costs, budget):
    best = None
    for r in range(1, max(v.numel() for v in s.values()) + 1):
        ranks = {t: min(r, v.numel()) for t, v in s.items()}
        if sum(costs[t] * k for t, k in ranks.items()) > budget:
            break
        best = allocation_error(s, ranks)
    return best


@settings(max_examples=80, deadline=None)
@given(cases)
def test_allocation_fits_the_budget_and_beats_uniform(case):
    sizes, cost_list, extra, seed = case
    s = _spectra(seed, sizes)
    costs = {t: cost_list[i] for i, t in enumerate(s)}
    budget = sum(costs.values()) + extra
    ranks = allocate_ranks(s, costs, budget)
    assert sum(costs[t] * r for t, r in ranks.items()) <= budget
    assert all(1 <= ranks[t] <= s[t].numel() for t in s)
    uniform = _uniform_error(s, costs, budget)
    assert uniform is not None
    assert allocation_error(s, ranks) <= uniform + 1e-12


@settings(max_examples=60, deadline=None)
@given(cases)
def test_allocation_is_optimal_when_costs_are_equal(case):
    sizes, _, extra, seed = case
    s = _spectra(seed, sizes)
    costs = {t: 3 for t in s}
    budget = 3 * len(s) + extra
    best = min(
        allocation_error(s, dict(zip(s, combo)))
        for combo in itertools.product(*(range(1, v.numel() + 1) for v in s.values()))
        if 3 * sum(combo) <= budget
    )
    assert allocation_error(s, allocate_ranks(s, costs, budget)) == pytest.approx(best, abs=1e-12)


def test_allocation_error_is_the_eckart_young_error():
    g = torch.Generator().manual_seed(0)
    deltas = {"a": torch.randn(6, 4, generator=g, dtype=torch.float64), "b": torch.randn(3, 5, generator=g, dtype=torch.float64)}
    ranks = {"a": 2, "b": 1}
    expected = 0.0
    for t, d in deltas.items():
        u, sv, vh = torch.linalg.svd(d, full_matrices=False)
        r = ranks[t]
        expected += float((d - u[:, :r] * sv[:r] @ vh[:r]).pow(2).sum())
    assert allocation_error(spectra(deltas), ranks) == pytest.approx(expected, rel=1e-10)
    assert rank_costs({"a": (6, 4), "b": (3, 5)}) == {"a": 10, "b": 8}


def test_allocation_refuses_bad_budgets_and_costs():
    s = _spectra(0, [3, 3])
    with pytest.raises(ValueError, match=r"budget=5 .* below the 8"):
        allocate_ranks(s, {"t0": 4, "t1": 4}, 5)
    with pytest.raises(ValueError, match="costs must be integers > 0"):
        allocate_ranks(s, {"t0": 0, "t1": 4}, 50)
    with pytest.raises(KeyError, match="no cost for targets"):
        allocate_ranks(s, {"t0": 4}, 50)
    with pytest.raises(ValueError, match="spectra is empty"):
        allocate_ranks({}, {}, 50)
