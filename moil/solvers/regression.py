"""Reduced-rank regression and the fast routes of the ALS steps built on it.

``argmin_{rank(M) ≤ r} ‖Y − X M‖_F`` in general (:func:`reduced_rank_regression`, two
SVDs), and the two special cases an ALS round of :class:`~moil.solvers.ALSFit` solves,
each through ``(in, in)`` Gram matrices with a fall-back to the general route when the
fast one is not exact: the low-rank step ``(Y)_r G⁻¹`` (:func:`low_rank_factors`) and the
transform step over a full-column-rank ``X`` (:func:`transform_step`). Rank-``r`` results
stay factored, ``(P, Q)`` for ``P Qᵀ``: products cost ``O(in²·r)``, not ``O(in³)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from moil.objectives import eckart_young

__all__ = ["low_rank_factors", "low_rank_step", "reduced_rank_regression", "split", "top", "transform_step"]

Factors = tuple[Tensor, Tensor]  # (P (p, k), Q (q, k)): the matrix P Qᵀ, shape (p, q)
OVERSAMPLE = 16  # extra float32 eigenvectors kept for the float64 Rayleigh–Ritz step
GAP = 1e-4  # float32 route only if λ_r − λ_{r+16} > GAP·λ_max (else its subspace may be off)


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


def top(y: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    r"""``(L, R, ‖Y_r‖²)`` with ``Y_r = L Rᵀ`` the rank-``r`` truncation of ``Y`` ``(p, q)``.

    Eckart–Young through the smaller Gram matrix: the top right singular vectors of ``Y``
    are the top eigenvectors ``V_r`` of ``C = YᵀY``, so ``Y_r = (Y V_r) V_rᵀ`` (``q ≤ p``;
    ``Yᵀ`` otherwise); ``L`` is ``(p, k)``, ``R`` ``(q, k)``, ``k = min(r, p, q)``. float64
    and ``r + 16 ≤ min(p, q) / 2``: a float32 ``C`` and ``eigh`` (≈3× faster than float64's)
    propose the top ``r + 16`` eigenvectors, and a float64 Rayleigh–Ritz step on their span
    (QR ``B``, ``(YB)ᵀ(YB)``, a small ``eigh``) returns float64 ones; its subspace error is
    ≈ ``ε₃₂ λ_max / (λ_r − λ_{r+16})``, so it is taken only when that gap exceeds
    ``1e-4 λ_max``. Else one float64 ``eigh`` of ``C``; either way no SVD.
    """
    p, q = y.shape
    if rank >= min(p, q):
        return y, torch.eye(q, dtype=y.dtype, device=y.device), y.square().sum()
    if q > p:
        left, right, kept = top(y.T, rank)
        return right, left, kept
    width = rank + OVERSAMPLE
    if y.dtype == torch.float64 and 2 * width <= q:
        y32 = y.float()
        lam32, v32 = torch.linalg.eigh(y32.T @ y32)
        if lam32[-rank] - lam32[-width - 1] > GAP * lam32[-1]:
            basis, _ = torch.linalg.qr(v32[:, -width:].double())
            yb = y @ basis
            small = yb.T @ yb
            lam, w = torch.linalg.eigh((small + small.T) / 2)
            return yb @ w[:, -rank:], basis @ w[:, -rank:], lam[-rank:].clamp(min=0).sum()
    lam, v = torch.linalg.eigh(y.T @ y)
    return y @ v[:, -rank:], v[:, -rank:], lam[-rank:].clamp(min=0).sum()


def low_rank_factors(g: Tensor, ys: list[Tensor], rank: int) -> list[Factors]:
    r"""``N_t = argmin_{rank ≤ r} ‖Y_t − N G‖_F`` for every ``Y_t`` ``(out_t, in)``, as ``(P, Q)``.

    ``G`` ``(in, in)`` square: when invertible, ``N ↦ N G`` is a rank-preserving bijection, so
    ``N_t = (Y_t)_r G⁻¹ = L (G⁻ᵀ R)ᵀ`` with ``(Y_t)_r = L Rᵀ`` (:func:`top`) — one LU of ``G``
    shared by all, solved for ``r`` columns. If ``N G`` does not reproduce ``(Y_t)_r`` to
    1e-6 (``G`` singular or nearly so, condition ≳ 1e9) that target takes the general
    minimum-norm route (:func:`reduced_rank_regression`), returned as ``(N, I)``.
    """
    lu, pivots, info = torch.linalg.lu_factor_ex(g)
    out = []
    for y in ys:
        pair = None
        if info == 0:
            left, right, _ = top(y, rank)
            x = torch.linalg.lu_solve(lu, pivots, right, adjoint=True)  # Gᵀ X = R
            # ‖N G − (Y_t)_r‖ = ‖L (GᵀX − R)ᵀ‖ ≤ ‖L‖ ‖GᵀX − R‖: the bound, without an (out, in) product
            error = torch.linalg.matrix_norm(left) * torch.linalg.matrix_norm(g.T @ x - right)
            size = ((left.T @ left) * (right.T @ right)).sum().clamp(min=0).sqrt()  # ‖L Rᵀ‖_F
            if error <= 1e-6 * size + torch.finfo(y.dtype).tiny:
                pair = (left, x)
        if pair is None:
            eye = torch.eye(y.shape[1], dtype=y.dtype, device=y.device)
            pair = (reduced_rank_regression(g.T, y.T, rank).T, eye)
        out.append(pair)
    return out


def low_rank_step(g: Tensor, targets: list[Tensor], w0: list[Tensor], rank: int) -> list[Tensor]:
    r"""``N_t = argmin_{rank ≤ r} ‖(W̄_t − W0_t G) − N G‖_F`` per target, dense ``(out_t, in)``
    (:func:`low_rank_factors` on ``Y_t = W̄_t − W0_t G``)."""
    pairs = low_rank_factors(g, [tw - w @ g for tw, w in zip(targets, w0)], rank)
    return [p @ q.T for p, q in pairs]


def _well_conditioned(gram: Tensor, chol: Tensor, steps: int = 8) -> bool:
    """``λ_min > 1e-10 λ_max`` for ``gram = RᵀR``, by power / inverse-power iteration (a
    vector, ``steps`` each: ``O(k²)``); the estimate of ``λ_min`` is from above, so the
    threshold is 10× stricter than the condition 1e11 at which float64 normal equations fail."""
    x = torch.ones(gram.shape[0], 1, dtype=gram.dtype, device=gram.device)
    hi, lo = x, x
    for _ in range(steps):
        hi = gram @ hi
        hi = hi / torch.linalg.vector_norm(hi)
        lo = torch.linalg.solve_triangular(chol, torch.linalg.solve_triangular(chol.T, lo, upper=False), upper=True)
        lo = lo / torch.linalg.vector_norm(lo)
    lam_max = (hi.T @ gram @ hi).squeeze()
    lam_min = (lo.T @ gram @ lo).squeeze()
    return bool(lam_min > 1e-10 * lam_max)


def transform_step(
    lows: list[Tensor], gaps: list[Tensor], rank: int, gram: Tensor | None = None, cross: Tensor | None = None
) -> tuple[Factors, Tensor, Tensor | None]:
    r"""``M = argmin_{rank ≤ r} ‖Y − X M‖_F`` (``X`` = stacked ``L_t``, ``Y`` = stacked gaps).

    With ``XᵀX = RᵀR`` (Cholesky, ``R`` upper) and ``X`` of full column rank (condition
    < 1e5, :func:`_well_conditioned`): ``X = Q R``, ``QᵀY = R⁻ᵀ XᵀY =: Z``, so ``M = R⁻¹ Z_r``
    and the error² is ``‖Y‖² − ‖Z_r‖²`` — ``(in, in)`` Gram matrices, no SVD of the tall ``X``.
    Else :func:`reduced_rank_regression`. ``gram = XᵀX`` and ``cross = XᵀY`` may be passed in
    (a caller that keeps ``L_t`` factored forms them in ``O(in²·r)``). Returns ``((P, Q),
    error², R or None)``, ``M = P Qᵀ``.
    """
    gram = sum(l.T @ l for l in lows) if gram is None else gram
    total = sum(y.square().sum() for y in gaps)
    chol, info = torch.linalg.cholesky_ex(gram, upper=True)
    if info == 0 and _well_conditioned(gram, chol):
        cross = sum(l.T @ y for l, y in zip(lows, gaps)) if cross is None else cross
        z = torch.linalg.solve_triangular(chol.T, cross, upper=False)
        left, right, kept = top(z, rank)
        p = torch.linalg.solve_triangular(chol, left, upper=True)
        return (p, right), (total - kept).clamp(min=0), chol
    x, y = torch.cat(lows), torch.cat(gaps)
    m = reduced_rank_regression(x, y, rank)
    eye = torch.eye(m.shape[1], dtype=m.dtype, device=m.device)
    return (m, eye), (y - x @ m).square().sum(), None


def split(x: Tensor | Factors, rank: int) -> tuple[Tensor, Tensor]:
    """``(B, A)``, the Eckart–Young even split of ``X`` (dense, or ``P Qᵀ``: the SVD of the
    small core ``R_P R_Qᵀ`` between the factors' QRs — the same split, no ``(p, q)`` SVD)."""
    if isinstance(x, Tensor):
        b, a, _ = eckart_young(x, rank)
        return b, a
    (qp, rp), (qq, rq) = torch.linalg.qr(x[0]), torch.linalg.qr(x[1])
    b, a, _ = eckart_young(rp @ rq.T, rank)
    return qp @ b, a @ qq.T
