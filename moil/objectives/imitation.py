r"""Weight imitation: how far a student's effective weights are from a target's.

A *student* and a *target* are both ``Mapping[str, Tensor]`` of effective
parameters keyed like a ``state_dict`` — ``"<module>.weight"`` of shape
``(out, in)`` and ``"<module>.bias"`` of shape ``(out,)`` — e.g. the output of
:meth:`moil.approx.Adapter.merge` (student ``Ŵ, b̂``) and a momentum target
(``W̄, b̄``). Every function here treats the target as a constant (it is
detached), so gradients reach only the student, and none modifies its inputs.

Three distances, from cheapest to most informed:

* :func:`imitation_loss` — MoIL's reference loss, ``Σ_keys mean((T − Ŵ)²)``;
* :func:`squared_frobenius_distance` / :func:`frobenius_distance` — the exact
  ``Σ_keys ‖T − Ŵ‖_F²`` and its root, the quantity in the bound
  (see :mod:`moil.objectives.bounds`);
* :func:`data_aware_imitation_loss` — ``E‖(T − Ŵ)x‖²`` under the inputs'
  second moment ``Σ = E[x xᵀ]`` (:func:`second_moment`): the expected squared
  output error itself, which the Frobenius distance bounds by ``‖Σ‖₂``.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

__all__ = [
    "imitation_loss",
    "squared_frobenius_distance",
    "frobenius_distance",
    "second_moment",
    "data_aware_imitation_loss",
    "output_error",
]


def _check_pair(
    fn: str, student: Mapping[str, Tensor], target: Mapping[str, Tensor], keys=None
) -> list[str]:
    """Validate that ``student`` and ``target`` match on ``keys`` (default: all, exactly)."""
    if keys is None:
        missing = [k for k in target if k not in student]
        extra = [k for k in student if k not in target]
        if missing or extra:
            raise KeyError(
                f"{fn}: student and target must have the same keys; missing from student: "
                f"{missing}, extra in student (not in target): {extra}. Merge the student over "
                "exactly the target's layers; a bias-free layer adapted by Transform or Hybrid "
                "gains a bias, so give the target a zero '<module>.bias' for it."
            )
        keys = list(target)
        if not keys:
            raise ValueError(f"{fn}: student and target are empty; pass at least one tensor.")
    for key in keys:
        s, t = student[key], target[key]
        if s.shape != t.shape:
            raise ValueError(
                f"{fn}: shape mismatch at key {key!r}: student has {tuple(s.shape)}, target has "
                f"{tuple(t.shape)}; both must be the same layer's parameter."
            )
        if s.device != t.device:
            raise ValueError(
                f"{fn}: device mismatch at key {key!r}: student on {s.device}, target on "
                f"{t.device}; move the target with {{k: v.to(device) for k, v in target.items()}}."
            )
        if not s.is_floating_point():
            raise TypeError(
                f"{fn}: key {key!r} has dtype {s.dtype}; weights must be floating-point."
            )
    return keys


def imitation_loss(student: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> Tensor:
    r"""MoIL's imitation loss: the sum over keys of each key's mean squared difference.

    .. math::
        \mathcal L_{imit} = \sum_{k} \frac{1}{|T_k|} \sum_{ij} (T_k - \hat W_k)_{ij}^2

    over all keys ``k`` — weights and biases alike, each averaged over its own
    entries. This is the reference implementation's
    ``Σ_blocks Σ_{q,k,v} [mean((W̄ − Ŵ)²) + mean((b̄ − b̂)²)]`` (Luo et al.,
    "MoIL", TPAMI 2025, public code). It is ``0`` exactly when student and target
    are equal and positive otherwise.

    Args:
      student: ``{key: Ŵ_k}``, each of any shape ``(*shape_k)`` (``(out, in)`` for a
        weight, ``(out,)`` for a bias), floating; gradients flow to these.
      target: ``{key: T_k}`` with exactly the same keys and shapes; detached.

    Returns:
      A 0-dim tensor (dtype promoted from both inputs).

    Raises:
      KeyError: the key sets differ (names the missing and extra keys).
      ValueError: a shape or device mismatch (names the key); empty inputs.
    """
    keys = _check_pair("imitation_loss", student, target)
    terms = [torch.mean(torch.square(target[k].detach() - student[k])) for k in keys]
    return torch.stack(terms).sum() if len(terms) > 1 else terms[0]


def squared_frobenius_distance(
    student: Mapping[str, Tensor], target: Mapping[str, Tensor]
) -> Tensor:
    r"""The exact squared weight distance ``Σ_keys ‖T_k − Ŵ_k‖_F²`` (no means).

    Unlike :func:`imitation_loss`, large layers count in proportion to their
    size; for one weight this is the ``‖T − Ŵ‖_F²`` of the single-layer bound
    ``‖(T − Ŵ)x‖ ≤ ‖T − Ŵ‖_F ‖x‖`` (METHOD.md, "The bound").

    Args:
      student: ``{key: Ŵ_k}``, shapes ``(*shape_k)``, floating.
      target: ``{key: T_k}``, same keys and shapes; detached.

    Returns:
      A 0-dim tensor, ``≥ 0``.

    Raises:
      KeyError / ValueError: as :func:`imitation_loss`.
    """
    keys = _check_pair("squared_frobenius_distance", student, target)
    terms = [torch.sum(torch.square(target[k].detach() - student[k])) for k in keys]
    return torch.stack(terms).sum() if len(terms) > 1 else terms[0]


def frobenius_distance(student: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> Tensor:
    r"""``sqrt(Σ_keys ‖T_k − Ŵ_k‖_F²)``: the Frobenius norm of all differences together.

    Computed as a vector norm of per-key norms, so its gradient at a zero
    distance is ``0`` (a subgradient) rather than ``nan``.

    Args:
      student: ``{key: Ŵ_k}``, shapes ``(*shape_k)``, floating.
      target: ``{key: T_k}``, same keys and shapes; detached.

    Returns:
      A 0-dim tensor, ``≥ 0``.
    """
    keys = _check_pair("frobenius_distance", student, target)
    norms = [torch.linalg.vector_norm(target[k].detach() - student[k]) for k in keys]
    return torch.linalg.vector_norm(torch.stack(norms))


def second_moment(x: Tensor, *, augmented: bool = False) -> Tensor:
    r"""The empirical second moment ``Σ = E[x xᵀ] = XᵀX / N`` of a layer's inputs.

    With ``augmented=True`` it is the moment of ``[x; 1]``,

    .. math::
        \Sigma_{aug} = \begin{pmatrix} E[x x^\top] & E[x] \\ E[x]^\top & 1 \end{pmatrix},

    so that :func:`data_aware_imitation_loss` also accounts for the bias.

    Args:
      x: samples of shape ``(..., in)``; every leading index is one sample
        (``N = x.numel() / in``), e.g. ``(batch, tokens, in)``. Floating.
      augmented: append the constant input ``1``.

    Returns:
      ``(in, in)``, or ``(in + 1, in + 1)`` when augmented; symmetric, PSD, dtype of ``x``.

    Raises:
      ValueError: ``x`` is 0-dim or holds no sample.
      TypeError: ``x`` is not floating-point.
    """
    if not isinstance(x, Tensor) or x.ndim < 1:
        raise ValueError(
            f"second_moment: x must have shape (..., in_features), got "
            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}."
        )
    if not x.is_floating_point():
        raise TypeError(
            f"second_moment: x must be floating-point, got dtype {x.dtype}; use x.float()."
        )
    samples = x.reshape(-1, x.shape[-1])
    n = samples.shape[0]
    if n == 0:
        raise ValueError(
            f"second_moment: x of shape {tuple(x.shape)} holds no sample; pass N >= 1."
        )
    moment = samples.mT @ samples / n
    if not augmented:
        return moment
    mean = samples.mean(dim=0)
    one = torch.ones((1, 1), dtype=x.dtype, device=x.device)
    return torch.cat([torch.cat([moment, mean[:, None]], 1), torch.cat([mean[None, :], one], 1)], 0)


def data_aware_imitation_loss(
    student: Mapping[str, Tensor], target: Mapping[str, Tensor], moments: Mapping[str, Tensor]
) -> Tensor:
    r"""The expected squared output error ``Σ_k E‖(T_k − Ŵ_k)x_k‖²`` under input moments.

    For each weight key ``k`` of ``moments``, with ``D = T_k − Ŵ_k`` ``(out, in)``:

    .. math::
        \mathrm{tr}(D \Sigma D^\top) = E\,\|D x\|^2, \qquad \Sigma = E[x x^\top]

    computed as ``((D @ Σ) * D).sum()`` — no ``(out, out)`` temporary. With an
    augmented moment ``(in + 1, in + 1)`` from ``second_moment(x, augmented=True)``
    the bias difference ``e = t − b̂`` enters as the constant input's column:
    ``E‖D x + e‖² = tr(D Σ_xx Dᵀ) + 2 eᵀ D E[x] + ‖e‖²``. A layer without a bias
    key in either dict has ``e = 0``. This is the quantity the Frobenius
    distance bounds, ``tr(D Σ Dᵀ) ≤ ‖Σ‖₂ ‖D‖_F²``; keys not in ``moments`` are
    ignored.

    Args:
      student: ``{"<m>.weight": Ŵ (out, in), "<m>.bias": b̂ (out,)}``, floating.
      target: the same keys and shapes for the layers used; detached.
      moments: ``{"<m>.weight": Σ}``, ``Σ`` of shape ``(in, in)`` or ``(in + 1, in + 1)``.

    Returns:
      A 0-dim tensor, ``≥ 0`` up to rounding for PSD moments.

    Raises:
      KeyError: a moment key has no weight in student/target, or only one side has a bias.
      ValueError: a moment is not square or its size is neither ``in`` nor ``in + 1``.
    """
    fn = "data_aware_imitation_loss"
    if not moments:
        raise ValueError(f"{fn}: moments is empty; pass {{'<module>.weight': second_moment(x)}}.")
    terms = [_data_aware_term(fn, key, sigma, student, target) for key, sigma in moments.items()]
    return torch.stack(terms).sum() if len(terms) > 1 else terms[0]


def _data_aware_term(
    fn: str, key: str, sigma: Tensor, student: Mapping[str, Tensor], target: Mapping[str, Tensor]
) -> Tensor:
    """``E‖D x (+ e)‖²`` for one layer; see :func:`data_aware_imitation_loss`."""
    if key not in student or key not in target:
        hint = f" — did you mean {key + '.weight'!r}?" if f"{key}.weight" in student else ""
        raise KeyError(
            f"{fn}: moment key {key!r} has no weight in both student and target{hint}; "
            "key moments by the weight they multiply, '<module>.weight'."
        )
    _check_pair(fn, student, target, [key])
    if student[key].ndim != 2:
        raise ValueError(
            f"{fn}: {key!r} has shape {tuple(student[key].shape)}; a moment multiplies an "
            "(out, in) weight."
        )
    if sigma.ndim != 2 or sigma.shape[0] != sigma.shape[1]:
        raise ValueError(
            f"{fn}: moment {key!r} must be square, got shape {tuple(sigma.shape)}; "
            "use second_moment(x)."
        )
    in_f, size = student[key].shape[1], sigma.shape[0]
    d = target[key].detach() - student[key]
    # A float64 moment (input_moments) with float32 weights: compute in the wider dtype.
    wide = torch.promote_types(d.dtype, sigma.dtype)
    d, sigma = d.to(wide), sigma.to(wide)
    if size == in_f:
        return ((d @ sigma) * d).sum()
    if size != in_f + 1:
        raise ValueError(
            f"{fn}: moment {key!r} has size {size} but the weight has in_features={in_f}; pass "
            f"second_moment(x) ({in_f}×{in_f}) or second_moment(x, augmented=True) "
            f"({in_f + 1}×{in_f + 1}) of that layer's inputs."
        )
    term = ((d @ sigma[:in_f, :in_f]) * d).sum()
    bias = key.removesuffix("weight") + "bias" if key.endswith(".weight") else None
    in_student, in_target = (bias in student, bias in target) if bias else (False, False)
    if in_student != in_target:
        side = "student" if in_student else "target"
        raise KeyError(f"{fn}: bias {bias!r} is in only the {side}; give both or neither.")
    if not in_student:  # a bias-free layer: e = 0
        return term
    _check_pair(fn, student, target, [bias])
    e = (target[bias].detach() - student[bias]).to(wide)  # in the wide dtype too, as d
    return term + 2 * torch.dot(e, d @ sigma[:in_f, in_f]) + sigma[in_f, in_f] * torch.dot(e, e)


def output_error(delta: Tensor, x: Tensor) -> Tensor:
    r"""``‖Δ x‖₂`` per sample: the output error of a weight error ``Δ = T − Ŵ``.

    Args:
      delta: ``(out, in)``.
      x: ``(..., in)``.

    Returns:
      ``(...)``, the Euclidean norm of ``x @ Δᵀ`` over the last axis.

    Raises:
      ValueError: ``delta`` is not 2-D or ``x``'s last size is not ``in``.
    """
    if delta.ndim != 2:
        raise ValueError(f"output_error: delta must be (out, in), got shape {tuple(delta.shape)}.")
    if x.ndim < 1 or x.shape[-1] != delta.shape[1]:
        raise ValueError(
            f"output_error: x must have shape (..., {delta.shape[1]}) to match delta "
            f"{tuple(delta.shape)}, got {tuple(x.shape)}."
        )
    return torch.linalg.vector_norm(x @ delta.mT, dim=-1)
