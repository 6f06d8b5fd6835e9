"""The imitation report of a run: how close each student came to the target it imitates.

Per student, over every target weight ``k`` (``W0`` the pre-trained weight, ``W̄`` the
student's target, ``Ŵ`` its merged weight, ``r`` its rank):

* ``distance = (Σ_k ‖W̄_k − Ŵ_k‖_F²)^½``;
* ``eckart_young_floor = (Σ_k ‖W̄_k − W0_k − [W̄_k − W0_k]_r‖_F²)^½`` — no rank-``r``
  update of ``W0`` gets closer (Eckart–Young; :func:`moil.objectives.best_low_rank`);
* ``uncovered_fraction = distance² / Σ_k ‖W̄_k − W0_k‖_F²``;

plus the singular values of the teacher's, the target's and the student's update on one
probe layer (the middle target weight), for the report's spectrum plot.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from moil.objectives import best_low_rank

__all__ = ["imitation_report"]


def _norm2(delta: Tensor) -> float:
    return float(delta.double().square().sum())


def _spectrum(update: Tensor) -> list[float]:
    return torch.linalg.svdvals(update.double()).tolist()


def imitation_report(recipe: Any, state: Any, backbone: Any) -> dict[str, Any]:
    """``{student: {rank, distance, eckart_young_floor, target_update_norm,
    uncovered_fraction, probe_layer, spectrum_teacher, spectrum_target, spectrum_student}}``
    for every student of ``recipe.imitation_targets(state, backbone)`` ({} when it has none)."""
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
        rank = adapter.approx.rank
        floor2 = sum(float(best_low_rank((target[k] - base[k]).double(), rank).error) ** 2 for k in weights)
        dist2 = sum(_norm2(target[k] - merged[k]) for k in weights)
        update2 = sum(_norm2(target[k] - base[k]) for k in weights)
        out[name] = {
            "rank": rank,
            "distance": dist2 ** 0.5,
            "eckart_young_floor": floor2 ** 0.5,
            "target_update_norm": update2 ** 0.5,
            "uncovered_fraction": dist2 / update2 if update2 else 0.0,
            "probe_layer": probe,
            "spectrum_teacher": _spectrum((target if teacher is None else teacher)[probe] - base[probe]),
            "spectrum_target": _spectrum(target[probe] - base[probe]),
            "spectrum_student": _spectrum(merged[probe] - base[probe]),
        }
    return out
