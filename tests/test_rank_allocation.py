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

from moil.objectives import best_low_rank
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


@st.composite
def layer_cases(draw):
    """Real updates of 1–4 targets with sides 1…6 (``1 × n``, ``n × 1``), each of any rank
    from 0 (a zero update) to full, magnitudes 1e-3…1e3, ``min_rank`` 0…2 and a budget from
    the ``min_rank`` floor up; costs ``out + in`` (LowRank), so they differ."""
    count = draw(st.integers(1, 4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    deltas = {}
    for i in range(count):
        out, inp = draw(st.integers(1, 6)), draw(st.integers(1, 6))
        k = draw(st.integers(0, min(out, inp)))
        size = draw(st.sampled_from([1e-3, 1.0, 1e3]))
        deltas[f"t{i}"] = size * torch.randn(out, k, generator=g, dtype=torch.float64) @ torch.randn(k, inp, generator=g, dtype=torch.float64)
    min_rank = draw(st.integers(0, 2))
    return deltas, min_rank, draw(st.integers(0, 80))


@settings(max_examples=80, deadline=None, derandomize=True)
@given(layer_cases())
def test_allocation_respects_the_budget_beats_uniform_and_is_maximal(case):
    """Laws on real layers: (1) ``Σ_t c_t r_t ≤ budget`` and ``min(min_rank, k_t) ≤ r_t ≤ k_t``;
    (2) the total Eckart–Young error is ≤ every uniform rank's that fits the budget; (3)
    maximal: no target below its full rank ``k_t`` costs ≤ the budget left over; (4) the
    error it reports is the one SVDFit's per-target fits at those ranks reach."""
    deltas, min_rank, extra = case
    shapes = {t: tuple(d.shape) for t, d in deltas.items()}
    costs, s = rank_costs(shapes), spectra(deltas)
    floor = sum(costs[t] * min(min_rank, s[t].numel()) for t in s)
    budget = floor + extra
    ranks = allocate_ranks(s, costs, budget, min_rank=min_rank)
    used = sum(costs[t] * r for t, r in ranks.items())
    assert used <= budget
    assert all(min(min_rank, s[t].numel()) <= ranks[t] <= s[t].numel() for t in s)
    error = allocation_error(s, ranks)
    for r in range(1, max(v.numel() for v in s.values()) + 1):
        uniform = {t: max(min(min_rank, v.numel()), min(r, v.numel())) for t, v in s.items()}
        if sum(costs[t] * k for t, k in uniform.items()) <= budget:
            assert error <= allocation_error(s, uniform) * (1 + 1e-12) + 1e-300
    assert not [t for t in s if ranks[t] < s[t].numel() and costs[t] <= budget - used]
    fitted = 0.0
    for t, d in deltas.items():
        if ranks[t]:
            fitted += float(best_low_rank(d, ranks[t]).error) ** 2
        else:
            fitted += float(d.square().sum())
    assert fitted == pytest.approx(error, rel=1e-9, abs=1e-9 * float(sum(d.square().sum() for d in deltas.values())))


def test_a_uniform_allocation_kept_is_topped_up():
    """Law (maximal): where the uniform allocation beats the greedy one (unequal costs), the
    budget it leaves is still spent: here uniform rank 4 costs 38 of 39, and the unit of t2
    (cost 1, s = 0.04) that still fits is added — error 0.00325 → 0.00164."""
    s = {t: torch.tensor(v, dtype=torch.float64) for t, v in {
        "t0": [0.255, 0.24], "t1": [0.716, 0.185, 0.127, 0.067], "t2": [0.885, 0.781, 0.667, 0.218, 0.04],
        "t3": [0.776, 0.748, 0.493, 0.193, 0.04, 0.005]}.items()}
    costs = {"t0": 1, "t1": 6, "t2": 1, "t3": 2}
    ranks = allocate_ranks(s, costs, 39)
    assert sum(costs[t] * r for t, r in ranks.items()) <= 39
    assert not [t for t in s if ranks[t] < s[t].numel() and costs[t] <= 39 - sum(costs[u] * ranks[u] for u in s)]
    assert allocation_error(s, ranks) < allocation_error(s, {"t0": 2, "t1": 4, "t2": 4, "t3": 4})
