"""A teacher shaped for a rank-``r`` student: its update's spectral tail decays as it trains.

MoIL's students lose what their teacher's update holds beyond their rank: the truncated
SVD of a full fine-tune at LoRA's size scores below the fine-tune itself. :class:`TailDecay`
wraps a recipe whose teacher trains at full rank (:class:`~moil.recipes.MoIL`,
:class:`~moil.recipes.FullFineTune`) and, after every ``every``-th step, shrinks each
target's update beyond rank ``r`` — a proximal step on the tail energy
``½‖Δ − Δ_r‖²``, so the task gradient keeps full rank while what the student cannot store
fades. Everything else (momentum targets, students, candidates) is the wrapped recipe's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import Tensor

from moil.recipes.finetune import FineTuneState, FullFineTune
from moil.recipes.moil import MoIL, MoILState

__all__ = ["TailDecay", "decay_tail"]


def decay_tail(weight: Tensor, w0: Tensor, rank: int, strength: float) -> Tensor:
    r"""``W0 + Δ_r + (1 − strength)(Δ − Δ_r)`` with ``Δ = W − W0`` and ``Δ_r`` its rank-``r``
    truncated SVD (Eckart–Young, float64); shape and dtype of ``weight`` ``(out, in)``.

    ``strength = 1`` projects the update onto rank ``r``; ``0`` returns ``weight`` unchanged.
    """
    delta = weight.double() - w0.double()
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    head = (u[:, :rank] * s[:rank]) @ vh[:rank]
    return (w0.double() + head + (1.0 - strength) * (delta - head)).to(weight.dtype)


def _strength(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ValueError(
            f"TailDecay: strength must be a number in (0, 1], got strength={value!r}; 1 projects the "
            "teacher's update onto rank r at every decay, 0.5 halves its tail."
        )


def _positive(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"TailDecay: {attribute.name} must be an integer >= 1, got {attribute.name}={value!r}.")


@attrs.frozen
class TailDecay:
    r"""After every ``every``-th step of ``recipe``, each target weight of its teacher becomes

    ``W ← W0 + Δ_r + (1 − strength)·(Δ − Δ_r)``,  ``Δ = W − W0``, ``Δ_r`` = best rank-``r`` ``Δ``

    (:func:`decay_tail`). Biases and the optimiser state are left as they are. With
    ``strength = 1`` and ``every = 1`` the teacher's weight update has rank ``≤ r`` after
    every step, so a rank-``r`` :class:`~moil.approx.LowRank` student with
    :class:`~moil.solvers.SVDFit` stores it exactly. Cost: one SVD of ``(out, in)`` per
    target every ``every`` steps.

    Args:
      recipe: :class:`~moil.recipes.MoIL` or :class:`~moil.recipes.FullFineTune`.
      rank: ``r ≥ 1``, the rank the update is shaped for (a student's).
      strength: fraction of the tail removed per decay, in ``(0, 1]``.
      every: steps between decays.
    """

    recipe: MoIL | FullFineTune = attrs.field(validator=attrs.validators.instance_of((MoIL, FullFineTune)))
    rank: int = attrs.field(validator=_positive)
    strength: float = attrs.field(default=1.0, validator=_strength)
    every: int = attrs.field(default=1, validator=_positive)

    @property
    def primary(self) -> str:
        return self.recipe.primary

    def init(self, backbone: Any, *, seed: int = 0) -> Any:
        for name, w in backbone.base().items():
            if name.endswith(".weight") and self.rank > min(w.shape):
                raise ValueError(f"TailDecay: rank={self.rank} exceeds target {name!r} of shape "
                                 f"{tuple(w.shape)}; use rank <= {min(w.shape)}.")
        return self.recipe.init(backbone, seed=seed)

    def step(self, state: Any, backbone: Any, batch: Mapping[str, Tensor]) -> tuple[Any, dict]:
        state, metrics = self.recipe.step(state, backbone, batch)
        if state.step % self.every:
            return state, metrics
        base = backbone.base()
        teacher = {k: decay_tail(v, base[k], self.rank, self.strength) if k.endswith(".weight") else v
                   for k, v in state.teacher.items()}
        return _with_teacher(state, teacher), metrics

    def finalize(self, state: Any, backbone: Any) -> Any:
        return self.recipe.finalize(state, backbone)

    def candidates(self, state: Any, backbone: Any) -> dict[str, dict[str, Tensor]]:
        return self.recipe.candidates(state, backbone)

    def students_of(self, state: Any, backbone: Any) -> dict:
        return self.recipe.students_of(state, backbone)

    def stored_parameters(self, state: Any, backbone: Any) -> dict[str, int]:
        return self.recipe.stored_parameters(state, backbone)

    def imitation_targets(self, state: Any, backbone: Any) -> dict:
        return self.recipe.imitation_targets(state, backbone)

    # Under torchrun MoIL's imitation is split over ranks (moil.distributed.sharding); the
    # teacher is whole on every rank, so every rank decays it alike.
    def gather_state(self, state: Any, backbone: Any, *, dst: int | None = None) -> Any:
        gather = getattr(self.recipe, "gather_state", None)
        return state if gather is None else gather(state, backbone, dst=dst)

    def local_state(self, state: Any, backbone: Any) -> Any:
        local = getattr(self.recipe, "local_state", None)
        return state if local is None else local(state, backbone)


def _with_teacher(state: MoILState | FineTuneState, teacher: dict[str, Tensor]) -> MoILState | FineTuneState:
    if isinstance(state, MoILState):
        return state._replace(task=_with_teacher(state.task, teacher))
    return state._replace(params={**state.params, "teacher": teacher})
