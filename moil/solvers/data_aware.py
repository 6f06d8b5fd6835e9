r"""Data-aware closed-form fits: the student closest to its target *on the layer's inputs*.

The Frobenius distance the paper minimises weighs every input direction alike.
What a layer's output feels is the error on its real inputs,

.. math::
    E\|(\bar W - \hat W)x\|^2 = \operatorname{tr}\big((\bar W - \hat W)\,\Sigma\,(\bar W - \hat W)^\top\big)
      = \|(\bar W - \hat W)\,S\|_F^2, \qquad \Sigma = E[x x^\top] = S S,

with ``S = Σ^{1/2}`` the symmetric root (``Σ`` from :func:`moil.backbones.input_moments`).
Both fits below are the closed-form solvers of :mod:`moil.solvers.closed_form`
in this ``Σ``-norm: whiten, solve the Frobenius problem, un-whiten.

* :class:`WhitenedSVDFit` — LowRank: ``B A = (Δ S)_r S⁺`` (Eckart–Young in the
  ``Σ``-norm; directions ``Σ`` never sees get no update, the minimum-norm choice).
* :class:`WhitenedALSFit` — Transform / Hybrid: the alternating exact regressions
  of :class:`~moil.solvers.ALSFit`, each in the ``Σ``-norm, so the ``Σ``-error never
  increases and is at most :class:`WhitenedSVDFit`'s at the same low rank.

With ``Σ = I`` both reduce to :class:`~moil.solvers.SVDFit` / :class:`~moil.solvers.ALSFit`.
Biases (Hybrid/Transform) are fitted by least squares as in ``ALSFit``.
"""

from __future__ import annotations

from typing import Mapping

import attrs
import torch
from torch import Tensor

from moil.approx import Adapter, LowRank, Transform
from moil.approx.protocol import positive_int
from moil.objectives import eckart_young
from moil.solvers.closed_form import ALSRound, alternate, group_params, reduced_rank_regression, tolerance_field
from moil.solvers.fit_forms import check_als_adapter, check_finite, check_low_rank_adapter

__all__ = ["WhitenedALSFit", "WhitenedSVDFit", "whitening"]

Tensors = Mapping[str, Tensor]


def whitening(sigma: Tensor) -> tuple[Tensor, Tensor]:
    r"""``(S, S⁺)``: the symmetric square root of a PSD ``Σ`` and its pseudo-inverse.

    ``Σ = Q diag(λ) Qᵀ``; ``S = Q diag(√λ) Qᵀ`` and ``S⁺ = Q diag(1/√λ) Qᵀ`` over the
    eigenvalues ``λ > n·ε·λ_max`` (the others, numerically zero, are dropped).

    Args:
      sigma: ``Σ``, shape ``(in, in)``, symmetric positive semi-definite.

    Returns:
      ``S`` and ``S⁺``, each ``(in, in)``, float64.
    """
    sigma = sigma.to(torch.float64)
    lam, q = torch.linalg.eigh((sigma + sigma.T) / 2)
    keep = lam > lam.max().clamp_min(0) * lam.numel() * torch.finfo(lam.dtype).eps
    if not bool(keep.any()):
        raise ValueError(
            "whitening: the input second moment is zero (no input reached the layer); "
            "collect moments on batches that exercise it."
        )
    root, qk = lam[keep].sqrt(), q[:, keep]
    return (qk * root) @ qk.T, (qk / root) @ qk.T


def _moment(moments: Tensors, members: tuple[str, ...], width: int, fit: str) -> Tensor:
    """The one ``Σ`` of a group of targets that read the same input."""
    found = [moments[f"{t}.weight"] for t in members if f"{t}.weight" in moments]
    if not found:
        raise KeyError(
            f"{fit}: no input moment for {members[0]!r}; pass moments keyed '<target>.weight' "
            "as returned by moil.backbones.input_moments(backbone, params, batches)."
        )
    sigma = found[0]
    if tuple(sigma.shape) != (width, width):
        raise ValueError(
            f"{fit}: the moment of {members[0]!r} has shape {tuple(sigma.shape)}, expected "
            f"({width}, {width}) — the layer's input width (an augmented (in+1) moment is not "
            "used here)."
        )
    return sigma


@attrs.frozen(eq=False)
class WhitenedSVDFit:
    r"""Set a :class:`~moil.approx.LowRank` student to the ``Σ``-norm optimum.

    For every target, ``s·B A = argmin_{rank ≤ r} ‖(Δ − M) S‖_F = (Δ S)_r S⁺`` with
    ``Δ = W̄ − W0`` and ``S = Σ^{1/2}``: the rank-``r`` update with the smallest
    expected output error on inputs of second moment ``Σ``. Biases are not adapted.

    Args:
      moments: ``{"<target>.weight": Σ}``, ``Σ`` of shape ``(in, in)``; targets that
        read one input may share one entry (any member's key).
    """

    moments: Mapping[str, Tensor] = attrs.field(converter=dict)

    def check(self, adapter: Adapter) -> None:
        """Raise now what :meth:`fit` would raise for ``adapter``'s form (no tensors needed)."""
        check_low_rank_adapter(adapter, "WhitenedSVDFit", "WhitenedALSFit")

    def fit(self, adapter: Adapter, base: Tensors, target: Tensors, params: Tensors) -> dict[str, Tensor]:
        approx = check_low_rank_adapter(adapter, "WhitenedSVDFit", "WhitenedALSFit")
        check_finite("WhitenedSVDFit", adapter, base, target)
        out = dict(params)
        for t in adapter.targets:
            w0 = base[f"{t}.weight"]
            s, s_pinv = whitening(_moment(self.moments, (t,), w0.shape[1], "WhitenedSVDFit"))
            delta = target[f"{t}.weight"].double() - w0.double()
            b, a, _ = eckart_young(delta @ s, approx.rank)
            out[adapter.key(t, "lora_b")] = (b / approx.scale).to(w0).contiguous()
            out[adapter.key(t, "lora_a")] = (a @ s_pinv).to(w0).contiguous()
        return out


@attrs.frozen(eq=False)
class WhitenedALSFit:
    r""":class:`~moil.solvers.ALSFit` in the ``Σ``-norm, for input-side Transform / Hybrid.

    Per sharing group (one input, one ``Σ = S S``), at most ``iterations`` rounds of

    1. low-rank step (Hybrid), ``G = I + M``:
       ``N_t = argmin_{rank ≤ r} ‖(W̄_t − W0_t G) S − N (G S)‖_F`` (a reduced-rank regression);
    2. transform step: ``K = argmin_{rank ≤ r_t} ‖[(W̄_t − L_t) S]_t − [L_t]_t K‖_F``,
       ``M = K S⁺`` (``K``'s rows lie in ``S``'s range, so ``M S = K``).

    Each step is exact; rounds are extrapolated, kept only if they lower the error
    ``Σ_t ‖(W̄_t − Ŵ_t) S‖_F²`` and stop as :class:`~moil.solvers.ALSFit`'s do
    (:func:`~moil.solvers.closed_form.alternate`), so the error never increases; the first
    step from ``M = 0`` is :class:`WhitenedSVDFit`'s optimum, so the fit is never worse.

    Args:
      moments: ``{"<target>.weight": Σ}``, ``(in, in)``; one per sharing group suffices.
      iterations: rounds at most, an integer ≥ 1.
      tolerance: stop when a round lowers the error by at most this fraction, ≥ 0.
    """

    moments: Mapping[str, Tensor] = attrs.field(converter=dict)
    iterations: int = attrs.field(default=8, validator=positive_int)
    tolerance: float = tolerance_field()

    def check(self, adapter: Adapter) -> None:
        """Raise now what :meth:`fit` would raise for ``adapter``'s form (no tensors needed)."""
        check_als_adapter(adapter, "WhitenedALSFit")

    def fit(self, adapter: Adapter, base: Tensors, target: Tensors, params: Tensors) -> dict[str, Tensor]:
        low, transform, groups = check_als_adapter(adapter, "WhitenedALSFit")
        check_finite("WhitenedALSFit", adapter, base, target)
        out = dict(params)
        views = adapter.views(params)
        for members in groups.values():
            out.update(self._fit_group(adapter, members, base, target, views, low, transform))
        return out

    def _fit_group(self, adapter, members, base, target, views, low: LowRank | None, transform: Transform):
        f64 = torch.float64
        like = base[f"{members[0]}.weight"]
        s, s_pinv = whitening(_moment(self.moments, members, like.shape[1], "WhitenedALSFit"))
        w0 = [base[f"{t}.weight"].to(f64) for t in members]
        tw = [target[f"{t}.weight"].to(f64) for t in members]
        view = views[members[0]]
        m = view["transform_up"].to(f64) @ view["transform_down"].to(f64)
        eye = torch.eye(m.shape[0], dtype=f64, device=m.device)

        def round_from(m: Tensor) -> ALSRound:
            lows, ns = w0, []
            if low is not None:
                g = eye + m
                h = g @ s
                ns = [reduced_rank_regression(h.T, ((t - w @ g) @ s).T, low.rank).T for t, w in zip(tw, w0)]
                lows = [w + n for w, n in zip(w0, ns)]
            x, gaps = torch.cat(lows), torch.cat([(t - l) @ s for t, l in zip(tw, lows)])
            k = reduced_rank_regression(x, gaps, transform.rank)
            return ALSRound((gaps - x @ k).square().sum(), k @ s_pinv, lows, ns, None)

        # Transform alone: one regression is the optimum.
        best = alternate(round_from, m, 1 if low is None else self.iterations, self.tolerance)
        return group_params(adapter, members, base, target, best.lows, best.ns, best.m, low, transform)
