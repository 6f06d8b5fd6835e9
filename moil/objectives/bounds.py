r"""The bound: weight distance controls output error (METHOD.md, "The bound").

For one linear layer and any input ``x``,

  ``‖(T − Ŵ)x‖₂ ≤ ‖T − Ŵ‖₂ ‖x‖₂ ≤ ‖T − Ŵ‖_F ‖x‖₂``  (:func:`layer_output_bound`),

for a bias-free MLP with 1-Lipschitz activations ``σ(0) = 0`` a telescoping sum
bounds the network's output error (:func:`network_bound`), and with the target
fixed no rank-``r`` additive student beats the truncated SVD of ``T − W0``
(Eckart–Young; :func:`best_low_rank`, on :func:`eckart_young`, the split the
closed-form solvers use too). The proofs are in ``docs/method.md``.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from moil.objectives.imitation import output_error

__all__ = [
    "spectral_norm",
    "LayerOutputBound",
    "layer_output_bound",
    "network_bound",
    "LowRankFit",
    "best_low_rank",
    "eckart_young",
]


def _work_dtype(t: Tensor) -> torch.dtype:
    # SVD-based norms need float32 at least (no bf16/fp16 kernels, and too coarse anyway).
    return torch.promote_types(t.dtype, torch.float32)


def _check_matrix(fn: str, name: str, w: Tensor) -> None:
    if not isinstance(w, Tensor) or w.ndim < 2:
        shape = tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__
        raise ValueError(f"{fn}: {name} must be a matrix of shape (..., out, in), got {shape}.")
    if not w.is_floating_point():
        raise TypeError(f"{fn}: {name} must be floating-point, got dtype {w.dtype}; use .float().")


def spectral_norm(w: Tensor) -> Tensor:
    r"""The operator 2-norm ``‖W‖₂ = σ_max(W)``, the largest singular value.

    Computed in at least float32 (bf16/fp16 inputs are upcast) and returned in
    ``w``'s dtype.

    Args:
      w: ``(..., out, in)``, floating.

    Returns:
      ``(...)`` — a 0-dim tensor for a single matrix.
    """
    _check_matrix("spectral_norm", "w", w)
    return torch.linalg.matrix_norm(w.to(_work_dtype(w)), ord=2).to(w.dtype)


class LayerOutputBound(NamedTuple):
    """The chain ``error ≤ spectral ≤ frobenius`` for one layer, per sample.

    Attributes:
      error: ``‖Δx‖₂``, shape ``(...)``.
      spectral: ``‖Δ‖₂ ‖x‖₂``, shape ``(...)``.
      frobenius: ``‖Δ‖_F ‖x‖₂``, shape ``(...)``.
    """

    error: Tensor
    spectral: Tensor
    frobenius: Tensor


def layer_output_bound(delta: Tensor, x: Tensor) -> LayerOutputBound:
    r"""The single-layer bound ``‖Δx‖₂ ≤ ‖Δ‖₂‖x‖₂ ≤ ‖Δ‖_F‖x‖₂``, evaluated.

    The first inequality is the definition of the operator norm; the second
    holds because ``‖Δ‖₂² = σ₁² ≤ Σ_i σ_i² = ‖Δ‖_F²``. With ``Δ = T − Ŵ`` it
    says the weight distance the imitation loss minimises bounds the layer's
    output error on every input (METHOD.md, "The bound").

    Args:
      delta: ``Δ = T − Ŵ``, shape ``(out, in)``, floating.
      x: inputs ``(..., in)``.

    Returns:
      :class:`LayerOutputBound` of three ``(...)`` tensors.
    """
    _check_matrix("layer_output_bound", "delta", delta)
    if delta.ndim != 2:
        raise ValueError(
            f"layer_output_bound: delta must be (out, in), got shape {tuple(delta.shape)}."
        )
    err = output_error(delta, x)
    x_norm = torch.linalg.vector_norm(x, dim=-1)
    return LayerOutputBound(
        error=err,
        spectral=spectral_norm(delta) * x_norm,
        frobenius=torch.linalg.matrix_norm(delta) * x_norm,
    )


def network_bound(
    finetuned: Sequence[Tensor], approximate: Sequence[Tensor], x_norm: Tensor | float
) -> Tensor:
    r"""Bound on ``‖f_ft(x) − f̂(x)‖₂`` for bias-free MLPs, from per-layer weight errors.

    For ``f(x) = W_L σ(W_{L−1} σ(… σ(W_1 x)))`` with ``σ`` 1-Lipschitz and
    ``σ(0) = 0`` (ReLU, tanh, …), finetuned weights ``W_l^ft`` and approximate
    ``Ŵ_l``:

    .. math::
        \|f_{ft}(x) - \hat f(x)\| \le \sum_{l=1}^{L}
          \Big(\prod_{k>l} \|W_k^{ft}\|_2\Big) \Big(\prod_{k<l} \|\hat W_k\|_2\Big)
          \|W_l^{ft} - \hat W_l\|_2 \, \|x\|

    (telescoping over networks that switch from ``Ŵ`` to ``W^ft`` after layer
    ``l``; METHOD.md, "The bound"; proof in ``docs/method.md``).

    Args:
      finetuned: ``[W_1^ft, …, W_L^ft]``, ``W_l`` of shape ``(d_l, d_{l−1})``.
      approximate: ``[Ŵ_1, …, Ŵ_L]``, the same shapes.
      x_norm: ``‖x‖₂`` — a float or a tensor of any shape ``(...)``.

    Returns:
      The bound, shape ``(...)`` of ``x_norm`` (0-dim for a float), in the dtype of
      ``finetuned[0]`` (computed in at least float32).

    Raises:
      ValueError: empty or unequal lists, a layer that is not 2-D, shapes that
        differ between the lists or do not chain (``W_{l+1}.shape[1] != W_l.shape[0]``).
    """
    fn = "network_bound"
    if len(finetuned) == 0 or len(finetuned) != len(approximate):
        raise ValueError(
            f"{fn}: finetuned and approximate must be non-empty lists of equal length, got "
            f"{len(finetuned)} and {len(approximate)} layers."
        )
    for i, (w, a) in enumerate(zip(finetuned, approximate, strict=True)):
        _check_matrix(fn, f"finetuned[{i}]", w)
        if w.ndim != 2 or a.shape != w.shape:
            raise ValueError(
                f"{fn}: layer {i}: finetuned has shape {tuple(w.shape)} and approximate "
                f"{tuple(a.shape)}; both must be the same (out, in) matrix."
            )
        if i and w.shape[1] != finetuned[i - 1].shape[0]:
            raise ValueError(
                f"{fn}: layer {i} reads {w.shape[1]} features but layer {i - 1} outputs "
                f"{finetuned[i - 1].shape[0]}; list the layers input-first, each (out, in)."
            )
    dtype = _work_dtype(finetuned[0])
    ft = torch.stack([spectral_norm(w.to(dtype)) for w in finetuned])
    hat = torch.stack([spectral_norm(a.to(dtype)) for a in approximate])
    diff = torch.stack(
        [
            spectral_norm(w.to(dtype) - a.to(dtype))
            for w, a in zip(finetuned, approximate, strict=True)
        ]
    )
    one = ft.new_ones(1)
    after = torch.cat([torch.flip(torch.cumprod(torch.flip(ft, [0]), 0), [0])[1:], one])  # Π_{k>l}
    before = torch.cat([one, torch.cumprod(hat, 0)[:-1]])  # Π_{k<l}
    coefficient = (after * before * diff).sum()
    return (coefficient * torch.as_tensor(x_norm, dtype=dtype, device=ft.device)).to(
        finetuned[0].dtype
    )


class LowRankFit(NamedTuple):
    """The best rank-``r`` approximation ``Δ_r = B A`` of a matrix ``Δ``.

    Attributes:
      lora_b: ``B = U_r diag(√s_r)``, shape ``(out, r)``.
      lora_a: ``A = diag(√s_r) V_rᵀ``, shape ``(r, in)``.
      error: ``‖Δ − B A‖_F = sqrt(Σ_{i>r} s_i²)``, 0-dim.
    """

    lora_b: Tensor
    lora_a: Tensor
    error: Tensor


def best_low_rank(delta: Tensor, rank: int) -> LowRankFit:
    r"""Eckart–Young: the rank-``r`` ``B A`` closest to ``Δ`` in Frobenius norm.

    With the SVD ``Δ = U diag(s) Vᵀ`` (``s`` descending),

    .. math::
        \min_{\mathrm{rank}(M) \le r} \|\Delta - M\|_F = \|\Delta - U_r S_r V_r^\top\|_F
          = \sqrt{\textstyle\sum_{i>r} s_i^2}

    (Eckart & Young, 1936). The singular values are split evenly,
    ``B = U_r √S_r`` and ``A = √S_r V_rᵀ``, so ``{"lora_a": A, "lora_b": B}`` are
    :class:`moil.approx.LowRank` parameters (scale 1) whose weight on ``W0`` is
    ``W0 + Δ_r``: with ``Δ = W̄ − W0`` the best low-rank-only student of a fixed
    target, and ``error`` the floor no rank-``r`` student goes below.

    Computed in float64 for float64 input, else float32 (so bf16/fp16 are
    upcast); returned in ``delta``'s dtype.

    Args:
      delta: ``Δ``, shape ``(out, in)``, floating.
      rank: ``r``, an integer with ``1 ≤ r ≤ min(out, in)``.

    Returns:
      :class:`LowRankFit` ``(lora_b (out, r), lora_a (r, in), error ())``.

    Raises:
      ValueError: ``delta`` not 2-D or ``rank`` out of range.
    """
    _check_matrix("best_low_rank", "delta", delta)
    if delta.ndim != 2:
        raise ValueError(f"best_low_rank: delta must be (out, in), got shape {tuple(delta.shape)}.")
    limit = min(delta.shape)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
        raise ValueError(
            f"best_low_rank: rank must be an integer in [1, min(out, in)] = [1, {limit}] for "
            f"delta of shape {tuple(delta.shape)}, got rank={rank!r}."
        )
    return eckart_young(delta, rank)


def eckart_young(delta: Tensor, rank: int) -> LowRankFit:
    r"""The even split ``B A = Δ_r`` of the truncated SVD — :func:`best_low_rank` unchecked.

    ``Δ = U diag(s) Vᵀ``, ``B = U_r √S_r``, ``A = √S_r V_rᵀ``, ``error = √(Σ_{i>r} s_i²)``.
    The one place moil splits a matrix by Eckart–Young: :func:`best_low_rank` checks
    its arguments and calls it; the closed-form solvers call it on float64 work
    matrices, where ``Δ`` may have fewer than ``r`` singular values (then ``B`` and
    ``A`` are zero-padded to ``r`` columns / rows, still ``B A = Δ``).

    Args:
      delta: ``Δ``, shape ``(p, q)``, floating (computed in at least float32).
      rank: ``r ≥ 1``.

    Returns:
      :class:`LowRankFit` ``(lora_b (p, r), lora_a (r, q), error ())`` in ``delta``'s
      dtype, ``lora_b`` and ``lora_a`` contiguous (LAPACK's column-major factors are
      copied, so a checkpoint restores them with the same strides and BLAS rounds a
      resumed run alike).
    """
    u, s, vh = torch.linalg.svd(delta.to(_work_dtype(delta)), full_matrices=False)
    root = torch.sqrt(s[:rank])
    lora_b = u[:, :rank] * root
    lora_a = root[:, None] * vh[:rank]
    pad = rank - root.numel()
    if pad > 0:
        lora_b = torch.cat([lora_b, lora_b.new_zeros(lora_b.shape[0], pad)], 1)
        lora_a = torch.cat([lora_a, lora_a.new_zeros(pad, lora_a.shape[1])], 0)
    error = torch.linalg.vector_norm(s[rank:]) if rank < s.numel() else s.new_zeros(())
    dtype = delta.dtype
    return LowRankFit(
        lora_b.to(dtype).contiguous(), lora_a.to(dtype).contiguous(), error.to(dtype)
    )
