r"""Budgeted rank allocation: which target gets how much of a stored-size budget.

A uniform rank spends the same on every target although their updates differ:
some ``Δ_t = W̄_t − W0_t`` are nearly low-rank, others are not. With ``s_{t,i}`` the
singular values of ``Δ_t`` (or of ``Δ_t S_t`` for the data-aware error), a rank-``r_t``
fit leaves ``e_t(r_t) = Σ_{i > r_t} s_{t,i}²`` (Eckart–Young), and a rank unit of target
``t`` costs ``c_t = out_t + in_t`` stored numbers (one column of ``B``, one row of ``A``).
:func:`allocate_ranks` solves

.. math::
    \min_{r} \sum_t e_t(r_t) \quad \text{s.t.} \quad \sum_t c_t r_t \le \text{budget}

greedily: the next unit goes to the target whose next singular value buys the most
error per stored number, ``s_{t,r_t+1}² / c_t``. The gains of one target fall with its
rank (``s`` is sorted), so with equal costs the greedy choice is exactly optimal; with
unequal costs (a 0/1 knapsack) it is not always, and the uniform allocation that fits
the budget, topped up by the same greedy step, is kept instead whenever it is better —
never worse than uniform. Either way no unit the leftover budget could still pay for is
left out (the result is maximal).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

__all__ = ["adapters_by_rank", "allocate_ranks", "allocation_error", "rank_costs", "spectra"]


def spectra(deltas: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``{t: s_t}``, the singular values (descending, float64) of each ``Δ_t`` ``(out, in)``."""
    return {t: torch.linalg.svdvals(d.to(torch.float64)) for t, d in deltas.items()}


def rank_costs(shapes: Mapping[str, tuple[int, int]]) -> dict[str, int]:
    """``{t: out_t + in_t}``: stored numbers per rank unit of a LowRank ``B A``."""
    return {t: int(out) + int(inp) for t, (out, inp) in shapes.items()}


def allocation_error(spectra: Mapping[str, Tensor], ranks: Mapping[str, int]) -> float:
    """``Σ_t Σ_{i > r_t} s_{t,i}²``: the total squared error of rank-``r_t`` truncations."""
    return float(sum(float((s[ranks[t]:] ** 2).sum()) for t, s in spectra.items()))


def _check(spectra: Mapping[str, Tensor], costs: Mapping[str, int], budget: int, min_rank: int) -> None:
    if not spectra:
        raise ValueError("allocate_ranks: spectra is empty; pass one spectrum per target.")
    missing = sorted(set(spectra) - set(costs))
    if missing:
        raise KeyError(f"allocate_ranks: no cost for targets {missing[:3]}; rank_costs(shapes) gives them.")
    bad = {t: c for t, c in costs.items() if t in spectra and not (isinstance(c, int) and c > 0)}
    if bad:
        raise ValueError(f"allocate_ranks: costs must be integers > 0, got {bad}.")
    if isinstance(min_rank, bool) or not isinstance(min_rank, int) or min_rank < 0:
        raise ValueError(f"allocate_ranks: min_rank must be an integer >= 0, got min_rank={min_rank!r}.")
    floor = sum(costs[t] * min(min_rank, s.numel()) for t, s in spectra.items())
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < floor:
        raise ValueError(
            f"allocate_ranks: budget={budget!r} stored numbers is below the {floor} that "
            f"min_rank={min_rank} on every target needs; raise the budget or lower min_rank."
        )


def allocate_ranks(
    spectra: Mapping[str, Tensor], costs: Mapping[str, int], budget: int, *, min_rank: int = 1
) -> dict[str, int]:
    r"""Ranks ``r_t`` with ``Σ_t c_t r_t ≤ budget`` that minimise ``Σ_t e_t(r_t)`` (see the module).

    Args:
      spectra: ``{t: s_t}``, singular values of each target's update, descending, shape ``(k_t,)``.
      costs: ``{t: c_t}``, stored numbers per rank unit (:func:`rank_costs`).
      budget: total stored numbers for the low-rank parts, an integer.
      min_rank: every target gets at least this rank (LowRank needs ``r ≥ 1``).

    Returns:
      ``{t: r_t}`` with ``min_rank ≤ r_t ≤ k_t`` (where ``k_t ≥ min_rank``), in ``spectra``'s order.

    Raises:
      ValueError: an empty spectra, a cost ≤ 0, or a budget below ``min_rank`` everywhere.
    """
    _check(spectra, costs, budget, min_rank)
    gains = {t: (s.to(torch.float64) ** 2).tolist() for t, s in spectra.items()}
    ranks = _fill(gains, costs, budget, {t: min(min_rank, s.numel()) for t, s in spectra.items()})
    uniform = _uniform(spectra, costs, budget, min_rank)
    if uniform is not None:
        # The uniform start, topped up greedily: never worse than uniform, and (as the greedy
        # one) no target left that one more unit of the leftover budget could improve.
        uniform = _fill(gains, costs, budget, uniform)
        if allocation_error(spectra, uniform) < allocation_error(spectra, ranks):
            return uniform
    return ranks


def _fill(gains: Mapping[str, list[float]], costs: Mapping[str, int], budget: int, ranks: dict[str, int]) -> dict[str, int]:
    """Greedy from ``ranks``: add the unit with the most ``s_{t,r_t+1}² / c_t`` while one fits."""
    ranks, left = dict(ranks), budget - sum(costs[t] * r for t, r in ranks.items())
    order = {t: i for i, t in enumerate(gains)}  # ties go to the earlier target: deterministic
    heap = [(-gains[t][r] / costs[t], order[t], t) for t, r in ranks.items() if r < len(gains[t])]
    heapq.heapify(heap)
    while heap:
        _, _, t = heapq.heappop(heap)
        if costs[t] > left:
            continue  # this target no longer fits; a cheaper one still may
        ranks[t] += 1
        left -= costs[t]
        if ranks[t] < len(gains[t]):
            heapq.heappush(heap, (-gains[t][ranks[t]] / costs[t], order[t], t))
    return ranks


def adapters_by_rank(ranks: Mapping[str, int], approximation: Callable[[int], object]) -> dict[int, object]:
    """``{r: Adapter(approximation(r), targets with rank r)}`` — one adapter per allocated rank.

    An :class:`~moil.approx.Adapter` has one approximation for all its targets, so a
    per-target allocation becomes one adapter per distinct rank; their parameter keys
    never collide (each names its target), so ``{**a.merge(p_a, base), **b.merge(p_b, base)}``
    is the whole student.
    """
    from moil.approx import Adapter

    by_rank: dict[int, list[str]] = {}
    for target, rank in ranks.items():
        by_rank.setdefault(rank, []).append(target)
    return {r: Adapter(approximation(r), tuple(ts)) for r, ts in sorted(by_rank.items())}


def _uniform(spectra, costs, budget, min_rank) -> dict[str, int] | None:
    """The largest common rank (capped per target at ``k_t``) that fits the budget."""
    best = None
    for r in range(max(min_rank, 1), max(s.numel() for s in spectra.values()) + 1):
        ranks = {t: min(r, s.numel()) for t, s in spectra.items()}
        if sum(costs[t] * k for t, k in ranks.items()) > budget:
            break
        best = ranks
    return best
