"""Closed-form fits of a student to a fixed target: no learning rate, no lag.

* :class:`SVDFit` — LowRank: the Eckart–Young optimum, ``B A = (W̄ − W0)_r``.
* :class:`ALSFit` — Transform / Hybrid (input side, transform shared or not):
  alternating exact minimisations of ``Σ_t ‖W̄_t − Ŵ_t‖_F²``, each a reduced-rank
  regression, so the error never increases; biases by least squares last.

Both return a new parameter dict (``params`` untouched) in the params' dtype;
the linear algebra runs in float64 (ALS's steps: :mod:`moil.solvers.regression`).
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import attrs
import torch
from torch import Tensor

from moil.approx import Adapter, LowRank, Transform
from moil.approx.protocol import positive_int
from moil.objectives import best_low_rank
from moil.solvers.fit_forms import check_als_adapter, check_finite, check_low_rank_adapter
from moil.solvers.regression import (
    Factors,
    low_rank_factors,
    low_rank_step as _low_rank_step,
    reduced_rank_regression,
    split,
    transform_step,
)

__all__ = ["SVDFit", "ALSFit", "ALSRound", "alternate", "bias_shift", "check_als_adapter", "check_low_rank_adapter", "group_params", "reduced_rank_regression"]

Tensors = Mapping[str, Tensor]


def group_params(
    adapter: Adapter, members: tuple[str, ...], base: Tensors, target: Tensors, lows: list[Tensor],
    ns: list[Tensor | Factors], m: Tensor | Factors, low: LowRank | None, transform: Transform,
    chol: Tensor | None = None,
) -> dict[str, Tensor]:
    r"""A sharing group's fitted parameters from an ALS-style fit's ``N_t`` and ``M``.

    ``s·B_t A_t = N_t`` and ``U D = M`` (Eckart–Young splits, exact at their ranks; each
    dense or factored ``(P, Q)``, see :func:`~moil.solvers.regression.split`), the bias shift
    by :func:`bias_shift` (``chol``: the Cholesky factor of ``Σ_t L_tᵀ L_t``, if known);
    contiguous, in the dtype of the group's ``W0``.
    """
    fitted: dict[str, Tensor] = {}
    if low is not None:
        for t, n in zip(members, ns):
            n = n / low.scale if isinstance(n, Tensor) else (n[0] / low.scale, n[1])
            fitted[adapter.key(t, "lora_b")], fitted[adapter.key(t, "lora_a")] = split(n, low.rank)
    up, down = split(m, transform.rank)
    fitted[adapter.key(members[0], "transform_up")] = up
    fitted[adapter.key(members[0], "transform_down")] = down
    fitted.update(bias_shift(adapter, members, base, target, lows, transform.rank, chol))
    like = base[f"{members[0]}.weight"]
    # .to() keeps a view's strides: copy, so a resumed run sees the same layout.
    return {k: v.to(like).contiguous() for k, v in fitted.items()}


def bias_shift(
    adapter: Adapter, members: tuple[str, ...], base: Tensors, target: Tensors, lows: list[Tensor],
    rank: int, chol: Tensor | None = None,
) -> dict[str, Tensor]:
    r"""The transform's bias parameters: ``b̂_t = L_t (U a + c) + b0_t`` with ``a = 0``, ``c = s``.

    ``s = argmin Σ_t ‖(b̄_t − b0_t) − L_t s‖²`` (least squares over the group's
    stacked ``L_t``, each ``(out_t, in)``); given ``chol = R``, ``Σ_t L_tᵀ L_t = RᵀR`` of
    full rank, by the normal equations ``s = R⁻¹ R⁻ᵀ Σ_t L_tᵀ (b̄_t − b0_t)``.
    Returns float64 tensors keyed by the group's owner.
    """
    f64 = torch.float64
    like = base[f"{members[0]}.weight"]
    gaps = []
    for t in members:
        b0, tb = base.get(f"{t}.bias"), target.get(f"{t}.bias")
        ref = torch.zeros(like.shape[0], dtype=f64, device=like.device) if tb is None else tb.to(f64)
        gaps.append(ref - (0 if b0 is None else b0.to(f64)))
    if chol is None:
        shift = torch.linalg.lstsq(torch.cat(lows), torch.cat(gaps)[:, None]).solution[:, 0]
    else:
        cross = sum(l.T @ gap for l, gap in zip(lows, gaps))[:, None]
        shift = torch.cholesky_solve(cross, chol, upper=True)[:, 0]
    t0 = members[0]
    return {
        adapter.key(t0, "transform_up_bias"): shift,
        adapter.key(t0, "transform_down_bias"): torch.zeros(rank, dtype=f64, device=like.device),
    }


@attrs.frozen
class SVDFit:
    r"""Set a :class:`~moil.approx.LowRank` student to the Eckart–Young optimum.

    For every target ``B A·s = (W̄ − W0)_r`` — the truncated SVD, the exact
    minimiser of ``‖W̄ − Ŵ‖_F`` over rank-``r`` students. Biases are not adapted.
    Every fitted tensor is contiguous (see :func:`moil.objectives.eckart_young`).
    """

    def check(self, adapter: Adapter) -> None:
        """Raise now what :meth:`fit` would raise for ``adapter`` (no tensors needed)."""
        check_low_rank_adapter(adapter, "SVDFit", "ALSFit")

    def fit(
        self, adapter: Adapter, base: Tensors, target: Tensors, params: Tensors
    ) -> dict[str, Tensor]:
        approx = check_low_rank_adapter(adapter, "SVDFit", "ALSFit")
        check_finite("SVDFit", adapter, base, target)
        out = dict(params)
        for t in adapter.targets:
            w0 = base[f"{t}.weight"]
            fit = best_low_rank(target[f"{t}.weight"].double() - w0.double(), approx.rank)
            out[adapter.key(t, "lora_b")] = (fit.lora_b / approx.scale).to(w0).contiguous()
            out[adapter.key(t, "lora_a")] = fit.lora_a.to(w0).contiguous()
        return out


BETA, GROWTH, LIMIT, SHRINK = 0.5, 1.5, 4.0, 3.0  # extrapolation: first β, ×GROWTH up to LIMIT, ÷SHRINK


def _tolerance(instance, attribute, value) -> None:
    """attrs validator: a finite real number ≥ 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValueError(
            f"{type(instance).__name__}: {attribute.name} must be a finite number >= 0, got "
            f"{attribute.name}={value!r}. Use e.g. {attribute.name}=1e-6, or 0 to run every round."
        )


class ALSRound(NamedTuple):
    """One ALS round's result: ``error`` = ``Σ_t ‖W̄_t − L_t (I + M)‖²`` after it."""

    error: Tensor
    m: Factors
    lows: list[Tensor]
    ns: list[Factors]
    chol: Tensor | None


def _extrapolate(m: Tensor | Factors, previous: Tensor | Factors, beta: float) -> Tensor | Factors:
    """``M + β (M − M_prev)``, dense or as factors (rank ≤ 2 r_t: a low-rank step takes any ``G``)."""
    if isinstance(m, Tensor):
        return (1 + beta) * m - beta * previous
    return torch.cat([(1 + beta) * m[0], -beta * previous[0]], 1), torch.cat([m[1], previous[1]], 1)


def alternate(
    round_from: Callable[[Tensor | Factors], ALSRound], m: Tensor | Factors, iterations: int, tolerance: float,
) -> ALSRound:
    r"""The best of at most ``iterations`` extrapolated ALS rounds from the transform ``m``.

    Round ``k + 1`` starts from ``M_k + β (M_k − M_{k−1})`` (β from 0.5, ×1.5 after an accepted
    extrapolated round, up to 4); a round that does not lower the error is rejected (β ÷ 3)
    and the next starts from ``M_k`` (plain ALS, which never raises it). Stops when a plain
    round does not lower the error or a round lowers it by at most ``tolerance`` of it.
    """
    best, previous, beta = round_from(m), None, BETA
    for _ in range(iterations - 1):
        extrapolated = previous is not None and beta > 0
        new = round_from(_extrapolate(best.m, previous, beta) if extrapolated else best.m)
        if not new.error < best.error:
            if not extrapolated:
                break  # converged to rounding
            previous, beta = None, beta / SHRINK  # reject; the next round is plain
            continue
        converged = best.error - new.error <= tolerance * best.error
        previous, best = best.m, new
        beta = min(GROWTH * beta, LIMIT) if extrapolated else beta
        if converged:
            break
    return best


def tolerance_field():
    """``tolerance``: a finite number ≥ 0, default 1e-6 (an attrs field for the ALS fits)."""
    return attrs.field(default=1e-6, validator=_tolerance)


@attrs.frozen
class ALSFit:
    r"""Alternating least squares for input-side :class:`Transform` / :class:`Hybrid`.

    Per sharing group ``g`` (targets that share the transform ``M = U D``, ``in × in``
    of rank ``r_t``) a round, from a transform ``M'``, is

    1. low-rank step (Hybrid only), per target with ``G = I + M'``:
       ``N_t = argmin_{rank ≤ r} ‖(W̄_t − W0_t G) − N G‖_F``, ``L_t = W0_t + N_t``;
    2. transform step: ``M = argmin_{rank ≤ r_t} Σ_t ‖(W̄_t − L_t) − L_t M‖_F``
       (targets stacked row-wise: one shared ``M``),

    each an exact reduced-rank regression, so a round from ``M' = M_k`` (plain ALS) never
    raises the error ``E = Σ_t ‖W̄_t − Ŵ_t‖_F²``. Plain ALS creeps (≈0.1 % per round after 8
    on ViLT-B/32 q/k/v), so rounds start from the extrapolation ``M' = M_k + β (M_k − M_{k−1})``
    (β from 0.5, ×1.5 after an accepted round up to 4); a round that does not lower ``E`` is
    rejected (β ÷ 3) and the next round is plain. Only rounds that lower ``E`` are kept, so
    ``E`` is non-increasing and the first round from ``M = 0`` is the Eckart–Young optimum:
    never worse than :class:`SVDFit`. It stops after ``iterations`` rounds, when a plain
    round does not lower ``E``, or when a round lowers it by at most ``tolerance · E``.
    Last, the bias shift ``s = U a + c`` solves ``min_s Σ_t ‖(b̄_t − b0_t) − L_t s‖²``
    (``a = 0``, ``c = s``). float64 results (float32 only inside eigen-solvers, refined in
    float64); ``N_t`` and ``M`` stay factored (:mod:`moil.solvers.regression`). Every
    fitted tensor is contiguous, in the params' dtype.

    The adapter after the layer (:class:`~moil.approx.OutputTransform`,
    :class:`~moil.approx.OutputHybrid`) has no such closed form: train it with
    ``Gradient`` steps.

    Args:
      iterations: rounds at most, an integer ≥ 1; the default 5 reaches what 8 plain rounds
        did (ViLT-B/32 ``Hybrid(96)``, ``benchmarks/fit_cost.py``).
      tolerance: stop when a round lowers ``E`` by at most this fraction, a number ≥ 0
        (0: run every round).
    """

    iterations: int = attrs.field(default=5, validator=positive_int)
    tolerance: float = tolerance_field()

    def check(self, adapter: Adapter) -> None:
        """Raise now what :meth:`fit` would raise for ``adapter`` (no tensors needed)."""
        check_als_adapter(adapter, "ALSFit")

    def fit(
        self, adapter: Adapter, base: Tensors, target: Tensors, params: Tensors
    ) -> dict[str, Tensor]:
        low, transform, groups = check_als_adapter(adapter, "ALSFit")
        check_finite("ALSFit", adapter, base, target)
        out = dict(params)
        views = adapter.views(params)
        for members in groups.values():
            out.update(self._fit_group(adapter, members, base, target, views, low, transform))
        return out

    def _fit_group(self, adapter, members, base, target, views, low, transform):
        f64 = torch.float64
        w0 = [base[f"{t}.weight"].to(f64) for t in members]
        tw = [target[f"{t}.weight"].to(f64) for t in members]
        view = views[members[0]]
        m = (view["transform_up"].to(f64), view["transform_down"].to(f64).T)  # M = P Qᵀ
        eye = torch.eye(m[0].shape[0], dtype=f64, device=m[0].device)

        w0w0 = sum(w.T @ w for w in w0)  # Σ W0ᵀW0 and Σ W0ᵀW̄, (in, in): once per group
        w0tw = sum(w.T @ t for w, t in zip(w0, tw))

        def round_from(m: Factors) -> ALSRound:
            ns: list[Factors] = []
            lows, gram, cross = w0, w0w0, w0tw
            if low is not None:
                ys = [t - w - (w @ m[0]) @ m[1].T for t, w in zip(tw, w0)]  # W̄ − W0 G
                ns = low_rank_factors(eye + m[0] @ m[1].T, ys, low.rank)
                lows = [w + p @ q.T for w, (p, q) in zip(w0, ns)]
                for w, t, (p, q) in zip(w0, tw, ns):  # L = W0 + P Qᵀ: LᵀL, LᵀW̄ in O(in²·r)
                    side = (w.T @ p) @ q.T
                    gram = gram + side + side.T + q @ (p.T @ p) @ q.T
                    cross = cross + q @ (p.T @ t)
            gaps = [t - l for t, l in zip(tw, lows)]
            new_m, error, chol = transform_step(lows, gaps, transform.rank, gram, cross - gram)
            return ALSRound(error, new_m, lows, ns, chol)

        best = alternate(round_from, m, 1 if low is None else self.iterations, self.tolerance)
        return group_params(adapter, members, base, target, best.lows, best.ns, best.m, low, transform, best.chol)
