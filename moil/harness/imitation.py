"""The imitation report of a run: how close each student came to the target it imitates.

Per student, over every target tensor ``k`` — weights *and* biases, the tensors the
training log's ``distance/<student>`` is measured over (``W0`` the pre-trained tensor,
``W̄`` the student's target, ``Ŵ`` its merged tensor, ``r`` its low-rank rank):

* ``distance = (Σ_k ‖W̄_k − Ŵ_k‖_F²)^½`` — after the run's final fit, if any;
* ``eckart_young_floor``: the *rank-r LowRank floor*
  ``(Σ_w ‖Δ_w − [Δ_w]_r‖_F² + Σ_b ‖b̄ − b0‖²)^½`` with ``Δ_w = W̄_w − W0_w`` over the
  weights and ``[·]_r`` the best rank-``r`` part: no additive rank-``r`` update of
  ``W0`` (which keeps ``b0``) gets closer (Eckart–Young;
  :func:`moil.objectives.best_low_rank`). A :class:`~moil.approx.Hybrid` of rank ``r``
  stores more than that LowRank and can go below it;
* ``equal_size_floor``: the same floor at ``equal_size_rank`` — the LowRank rank whose
  stored size over the targets, ``r·Σ_w(out_w + in_w)``, is closest to the student's;
  the floor a LoRA-like student of the *same stored size* cannot beat;
* ``uncovered_fraction = distance² / Σ_k ‖W̄_k − W0_k‖_F²``;

plus the singular values of the teacher's, the target's and the student's update on one
probe layer (the middle target weight), for the report's spectrum plot, and the
student's ``transform_rank`` ``r_t`` (``None`` without a transform): a Hybrid's update
``Ŵ − W0 = B A (I + U D) + W0 U D`` has rank up to ``r + r_t``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from moil.approx import LowRank

__all__ = ["imitation_report", "equal_size_rank", "low_rank_floor"]


def _norm2(delta: Tensor) -> float:
    return float(delta.double().square().sum())


def _spectrum(update: Tensor) -> list[float]:
    return torch.linalg.svdvals(update.double()).tolist()


def equal_size_rank(backbone: Any, adapter: Any) -> int:
    """The LowRank rank whose stored size over ``backbone``'s targets is closest to
    ``adapter``'s: ``round(size(adapter) / size(LowRank(1)))``, clipped to
    ``[1, min_w min(out_w, in_w)]`` (shared parameters counted once, as stored)."""
    base = backbone.base()
    per_rank = backbone.adapter(LowRank(1)).num_params(base)
    limit = min(min(w.shape) for k, w in base.items() if k.endswith(".weight"))
    return max(1, min(limit, round(adapter.num_params(base) / per_rank)))


def low_rank_floor(spectra: dict[str, Tensor], bias_shift2: float, rank: int) -> float:
    """``(Σ_w Σ_{i>rank} s_{w,i}² + bias_shift2)^½`` — the rank-``rank`` LowRank floor
    from each weight update's singular values ``s_w`` (descending, shape ``(min(out, in),)``)
    and the squared norm of the biases' shift ``Σ_b ‖b̄ − b0‖²`` (a LowRank keeps ``b0``)."""
    tails = sum(float(s[rank:].square().sum()) for s in spectra.values())
    return (tails + bias_shift2) ** 0.5


def _transform_rank(approx: Any) -> int | None:
    transform = getattr(approx, "transform", None)
    return None if transform is None else int(transform.rank)


def imitation_report(recipe: Any, state: Any, backbone: Any) -> dict[str, Any]:
    """``{student: {rank, transform_rank, equal_size_rank, stored_parameters, distance,
    eckart_young_floor, equal_size_floor, target_update_norm, uncovered_fraction,
    probe_layer, spectrum_teacher, spectrum_target, spectrum_student}}`` for every
    student of ``recipe.imitation_targets(state, backbone)`` ({} when it has none);
    ``stored_parameters`` counts the student's adapter over the targets only."""
    targets = recipe.imitation_targets(state, backbone)
    if not targets:
        return {}
    base, out = backbone.base(), {}
    weights = [k for k in base if k.endswith(".weight")]
    probe = weights[len(weights) // 2]
    # A recipe imitating a fixed fine-tuned model has no teacher candidate: the
    # target is that model.
    teacher = recipe.candidates(state, backbone).get("teacher")
    students = recipe.students_of(state, backbone)
    for name, target in targets.items():
        adapter, params = students[name]
        merged = adapter.merge(params, base)
        rank, same_size = adapter.approx.rank, equal_size_rank(backbone, adapter)
        spectra = {k: torch.linalg.svdvals((target[k] - base[k]).double()) for k in weights}
        bias_shift2 = sum(_norm2(target[k] - base[k]) for k in target if k not in spectra)
        dist2 = sum(_norm2(target[k] - merged[k]) for k in target)
        update2 = sum(_norm2(target[k] - base[k]) for k in target)
        out[name] = {
            "rank": rank,
            "transform_rank": _transform_rank(adapter.approx),
            "equal_size_rank": same_size,
            "stored_parameters": adapter.num_params(base),
            "distance": dist2 ** 0.5,
            "eckart_young_floor": low_rank_floor(spectra, bias_shift2, rank),
            "equal_size_floor": low_rank_floor(spectra, bias_shift2, same_size),
            "target_update_norm": update2 ** 0.5,
            "uncovered_fraction": dist2 / update2 if update2 else 0.0,
            "probe_layer": probe,
            "spectrum_teacher": _spectrum((target if teacher is None else teacher)[probe] - base[probe]),
            "spectrum_target": spectra[probe].tolist(),
            "spectrum_student": _spectrum(merged[probe] - base[probe]),
        }
    return out
