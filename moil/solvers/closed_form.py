"""Closed-form fits of a student to a fixed target: no learning rate, no lag.

* :class:`SVDFit` — LowRank: the Eckart–Young optimum, ``B A = (W̄ − W0)_r``.
* :class:`ALSFit` — Transform / Hybrid (input side, transform shared or not):
  alternating exact minimisations of ``Σ_t ‖W̄_t − Ŵ_t‖_F²``, each a reduced-rank
  regression, so the error never increases; biases by least squares last.

Both return a new parameter dict (``params`` untouched) in the params' dtype;
the linear algebra runs in float64.
"""

from __future__ import annotations

from typing import Mapping

import attrs
import torch
from torch import Tensor

from moil.approx import TRANSFORM_KEYS, Adapter, Hybrid, LowRank, Transform
from moil.approx.protocol import positive_int
from moil.objectives import best_low_rank, eckart_young

__all__ = ["SVDFit", "ALSFit", "bias_shift", "check_als_adapter", "check_low_rank_adapter", "group_params", "reduced_rank_regression"]

Tensors = Mapping[str, Tensor]


def _truncate(y: Tensor, rank: int) -> Tensor:
    """``Y_r``: the best rank-``r`` approximation of ``Y`` (Eckart–Young)."""
    fit = eckart_young(y, rank)
    return fit.lora_b @ fit.lora_a


def reduced_rank_regression(x: Tensor, y: Tensor, rank: int) -> Tensor:
    r"""``argmin_{rank(M) ≤ r} ‖Y − X M‖_F`` (minimum-norm solution).

    With ``X = U S Vᵀ`` (thin SVD, ``Q`` = columns of ``U`` with ``s > 0``):
    ``‖Y − XM‖² = ‖(I − QQᵀ)Y‖² + ‖QᵀY − S Vᵀ M‖²``, so ``M = V S⁻¹ (QᵀY)_r``
    with ``(·)_r`` the truncated SVD (Eckart–Young).

    Args:
      x: ``X``, shape ``(n, p)``.
      y: ``Y``, shape ``(n, q)``.
      rank: ``r ≥ 1``.

    Returns:
      ``M``, shape ``(p, q)``, rank ≤ ``r``.
    """
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    keep = s > s.max() * max(x.shape) * torch.finfo(s.dtype).eps
    z = u[:, keep].T @ y
    return vh[keep].T @ (_truncate(z, rank) / s[keep, None])


def _low_rank_step(g: Tensor, targets: list[Tensor], w0: list[Tensor], rank: int) -> list[Tensor]:
    r"""``N_t = argmin_{rank ≤ r} ‖(W̄_t − W0_t G) − N G‖_F`` for every target.

    ``G = I + M`` is square, ``(in, in)``; ``W̄_t``, ``W0_t``, ``N_t`` are ``(out_t, in)``.
    When ``G`` is invertible, ``N ↦ N G`` is a rank-preserving bijection, so the
    minimiser is ``N_t = (W̄_t − W0_t G)_r G⁻¹`` — one truncated SVD per target and one
    LU of ``G`` shared by all, instead of a reduced-rank regression (two SVDs) each.
    If the solve does not reproduce ``(·)_r`` to 1e-6 (``G`` singular or nearly so,
    condition ≳ 1e9) that target takes the general minimum-norm route.
    """
    lu, pivots, info = torch.linalg.lu_factor_ex(g)
    out = []
    for tw, w in zip(targets, w0):
        y = tw - w @ g
        n = None
        if info == 0:
            y_r = _truncate(y, rank)
            n = torch.linalg.lu_solve(lu, pivots, y_r, left=False)
            error = torch.linalg.matrix_norm(n @ g - y_r)
            if not error <= 1e-6 * torch.linalg.matrix_norm(y_r) + torch.finfo(y.dtype).tiny:
                n = None
        out.append(reduced_rank_regression(g.T, y.T, rank).T if n is None else n)
    return out


def group_params(
    adapter: Adapter, members: tuple[str, ...], base: Tensors, target: Tensors, lows: list[Tensor],
    ns: list[Tensor], m: Tensor, low: LowRank | None, transform: Transform,
) -> dict[str, Tensor]:
    r"""A sharing group's fitted parameters from an ALS-style fit's ``N_t`` and ``M``.

    ``s·B_t A_t = N_t`` and ``U D = M`` (Eckart–Young splits, exact at their ranks), the
    bias shift by :func:`bias_shift`; contiguous, in the dtype of the group's ``W0``.
    """
    fitted: dict[str, Tensor] = {}
    if low is not None:
        for t, n in zip(members, ns):
            b, a, _ = eckart_young(n / low.scale, low.rank)
            fitted[adapter.key(t, "lora_b")], fitted[adapter.key(t, "lora_a")] = b, a
    up, down, _ = eckart_young(m, transform.rank)
    fitted[adapter.key(members[0], "transform_up")] = up
    fitted[adapter.key(members[0], "transform_down")] = down
    fitted.update(bias_shift(adapter, members, base, target, lows, transform.rank))
    like = base[f"{members[0]}.weight"]
    # .to() keeps a view's strides: copy, so a resumed run sees the same layout.
    return {k: v.to(like).contiguous() for k, v in fitted.items()}


def check_low_rank_adapter(adapter: Adapter, fit: str, other: str) -> LowRank:
    """The :class:`~moil.approx.LowRank` of an adapter a rank-truncation fit can solve.

    Raises:
      TypeError: not LowRank (names ``other``, the fit for Transform/Hybrid).
      ValueError: ``lora_a`` is shared across targets (no closed form).
    """
    approx = adapter.approx
    if not isinstance(approx, LowRank):
        raise TypeError(
            f"{fit} fits LowRank students, got {type(approx).__name__}; use {other} for Transform/Hybrid."
        )
    if adapter.sharing is not None and "lora_a" in adapter.sharing.keys:
        raise ValueError(f"{fit}: a shared lora_a has no closed form; use Gradient steps.")
    return approx


def check_als_adapter(adapter: Adapter, fit: str) -> tuple[LowRank | None, Transform, dict[str, tuple[str, ...]]]:
    """``(low rank part or None, transform, groups)`` of an adapter an ALS-style fit can solve.

    Raises:
      TypeError: the approximation is not an input-side Transform / Hybrid.
      ValueError: ``lora_a`` is shared, or the transform is shared only in part.
    """
    approx = adapter.approx
    if isinstance(approx, Hybrid):
        low, transform = approx.low_rank, approx.transform
    elif isinstance(approx, Transform):
        low, transform = None, approx
    else:
        raise TypeError(
            f"{fit} fits the input-side Transform/Hybrid, got {type(approx).__name__}; use "
            "SVDFit for LowRank and Gradient steps for OutputTransform/OutputHybrid."
        )
    if low is not None and adapter.sharing is not None and "lora_a" in adapter.sharing.keys:
        raise ValueError(f"{fit}: a shared lora_a has no closed form; use Gradient steps.")
    shared = adapter.sharing.keys & set(TRANSFORM_KEYS) if adapter.sharing else set()
    if shared and shared != set(TRANSFORM_KEYS):
        raise ValueError(
            f"{fit}: the transform is shared only in part ({sorted(shared)}); share all of "
            "TRANSFORM_KEYS or none."
        )
    groups = adapter.groups() if shared else {t: (t,) for t in adapter.targets}
    return low, transform, groups


def bias_shift(
    adapter: Adapter, members: tuple[str, ...], base: Tensors, target: Tensors, lows: list[Tensor], rank: int
) -> dict[str, Tensor]:
    r"""The transform's bias parameters: ``b̂_t = L_t (U a + c) + b0_t`` with ``a = 0``, ``c = s``.

    ``s = argmin Σ_t ‖(b̄_t − b0_t) − L_t s‖²`` (least squares over the group's
    stacked ``L_t``, each ``(out_t, in)``). Returns float64 tensors keyed by the group's owner.
    """
    f64 = torch.float64
    like = base[f"{members[0]}.weight"]
    gaps = []
    for t in members:
        b0, tb = base.get(f"{t}.bias"), target.get(f"{t}.bias")
        ref = torch.zeros(like.shape[0], dtype=f64, device=like.device) if tb is None else tb.to(f64)
        gaps.append(ref - (0 if b0 is None else b0.to(f64)))
    shift = torch.linalg.lstsq(torch.cat(lows), torch.cat(gaps)[:, None]).solution[:, 0]
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

    def fit(
        self, adapter: Adapter, base: Tensors, target: Tensors, params: Tensors
    ) -> dict[str, Tensor]:
        approx = check_low_rank_adapter(adapter, "SVDFit", "ALSFit")
        out = dict(params)
        for t in adapter.targets:
            w0 = base[f"{t}.weight"]
            fit = best_low_rank(target[f"{t}.weight"].double() - w0.double(), approx.rank)
            out[adapter.key(t, "lora_b")] = (fit.lora_b / approx.scale).to(w0).contiguous()
            out[adapter.key(t, "lora_a")] = fit.lora_a.to(w0).contiguous()
        return out


@attrs.frozen
class ALSFit:
    r"""Alternating least squares for input-side :class:`Transform` / :class:`Hybrid`.

    Per sharing group ``g`` (targets that share the transform ``M = U D``, ``in × in``
    of rank ``r_t``) it alternates, for ``iterations`` rounds:

    1. low-rank step (Hybrid only), per target with ``G = I + M``:
       ``N_t = argmin_{rank ≤ r} ‖(W̄_t − W0_t G) − N G‖_F``, ``L_t = W0_t + N_t``;
    2. transform step: ``M = argmin_{rank ≤ r_t} Σ_t ‖(W̄_t − L_t) − L_t M‖_F``
       (targets stacked row-wise: one shared ``M``).

    Each is an exact reduced-rank regression, so the error is non-increasing; the
    first low-rank step from ``M = 0`` is the Eckart–Young optimum, hence the fit is
    never worse than :class:`SVDFit`. Last, the bias shift ``s = U a + c`` solves
    ``min_s Σ_t ‖(b̄_t − b0_t) − L_t s‖²`` (``a = 0``, ``c = s``). Every fitted tensor
    is contiguous, in the params' dtype.

    The adapter after the layer (:class:`~moil.approx.OutputTransform`,
    :class:`~moil.approx.OutputHybrid`) has no such closed form: train it with
    ``Gradient`` steps.

    Args:
      iterations: alternation rounds, an integer ≥ 1.
    """

    iterations: int = attrs.field(default=8, validator=positive_int)

    def fit(
        self, adapter: Adapter, base: Tensors, target: Tensors, params: Tensors
    ) -> dict[str, Tensor]:
        low, transform, groups = check_als_adapter(adapter, "ALSFit")
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
        m = view["transform_up"].to(f64) @ view["transform_down"].to(f64)
        eye = torch.eye(m.shape[0], dtype=f64, device=m.device)
        ns: list[Tensor] = []
        if low is None:
            lows = w0
        else:
            lows = [
                w + low.scale * views[t]["lora_b"].to(f64) @ views[t]["lora_a"].to(f64)
                for t, w in zip(members, w0)
            ]
        for _ in range(self.iterations):
            if low is not None:
                g = eye + m
                ns = _low_rank_step(g, tw, w0, low.rank)
                lows = [w + n for w, n in zip(w0, ns)]
            stacked = torch.cat(lows)
            m = reduced_rank_regression(stacked, torch.cat([t - l for t, l in zip(tw, lows)]), transform.rank)
            if low is None:
                break  # nothing to alternate with: one regression is the optimum
        return group_params(adapter, members, base, target, lows, ns, m, low, transform)
