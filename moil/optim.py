"""A pure AdamW and learning-rate schedules, kept outside every loss.

``AdamW.init(params) -> AdamState``; ``AdamW.update(grads, state, params) ->
(new_params, new_state)``. Parameters, gradients and moments are plain
``dict[str, Tensor]``; the update uses ``torch._foreach_*`` kernels and returns
new tensors, so a step that turns out to be bad (a NaN loss) leaves the old
state intact.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, NamedTuple

import attrs
import torch
from torch import Tensor

__all__ = ["AdamState", "AdamW", "WarmupLinearDecay", "Constant", "Scaled"]

LRSchedule = Callable[[int], float]


def _non_negative(instance, attribute, value) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{type(instance).__name__}: {attribute.name} must be a finite number >= 0, got "
            f"{attribute.name}={value!r}."
        )


@attrs.frozen
class Constant:
    """``lr(t) = value``."""

    value: float = attrs.field(validator=_non_negative)

    def __call__(self, step: int) -> float:
        return float(self.value)


@attrs.frozen
class WarmupLinearDecay:
    r"""Linear warm-up to ``peak`` over ``warmup`` of ``total_steps``, then linear decay to 0.

    ``lr(t) = peak·(t+1)/w`` for ``t < w``; ``peak·(T − t)/(T − w)`` after, floored at 0;
    ``w = round(warmup·T)`` when ``warmup < 1`` (a fraction), else ``warmup`` steps.
    MoIL's reference: ``peak = 1e-4``, 10 % warm-up.
    """

    peak: float = attrs.field(validator=_non_negative)
    total_steps: int = attrs.field()
    warmup: float = attrs.field(default=0.1, validator=_non_negative)

    @total_steps.validator
    def _check_total(self, attribute, value) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"WarmupLinearDecay: total_steps must be >= 1, got total_steps={value!r}.")

    @property
    def warmup_steps(self) -> int:
        w = round(self.warmup * self.total_steps) if self.warmup < 1 else int(self.warmup)
        return min(w, self.total_steps)

    def __call__(self, step: int) -> float:
        w, total = self.warmup_steps, self.total_steps
        if step < w:
            return self.peak * (step + 1) / w
        if total == w:
            return self.peak
        return self.peak * max(0.0, (total - step) / (total - w))


@attrs.frozen
class Scaled:
    """``lr(t) = factor · schedule(t)`` — e.g. a head learning-rate multiplier."""

    schedule: LRSchedule
    factor: float = attrs.field(validator=_non_negative)

    def __call__(self, step: int) -> float:
        return self.factor * self.schedule(step)


class AdamState(NamedTuple):
    """AdamW state: ``step`` updates done; first and second moments shaped like the params."""

    step: int
    exp_avg: dict[str, Tensor]
    exp_avg_sq: dict[str, Tensor]


@attrs.frozen
class AdamW:
    r"""AdamW (Loshchilov & Hutter, 2019), as ``torch.optim.AdamW`` computes it.

    With ``g`` the gradient at step ``t`` (1-based):
    ``m ← β₁m + (1−β₁)g``, ``v ← β₂v + (1−β₂)g²``,
    ``p ← p(1 − η·λ) − η·(m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + ε)``.

    Args:
      lr: ``η`` — a float or a schedule ``step -> lr`` (called with the 0-based step).
      betas: ``(β₁, β₂)``; MoIL's reference uses ``(0.9, 0.98)``.
      eps: ``ε``.
      weight_decay: decoupled ``λ``; reference 0.01.
    """

    lr: float | LRSchedule = 1e-4
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.98), converter=tuple)
    eps: float = attrs.field(default=1e-8, validator=_non_negative)
    weight_decay: float = attrs.field(default=0.01, validator=_non_negative)

    @betas.validator
    def _check_betas(self, attribute, value) -> None:
        if len(value) != 2 or not all(0.0 <= b < 1.0 for b in value):
            raise ValueError(f"AdamW: betas must be two numbers in [0, 1), got betas={value!r}.")

    def learning_rate(self, step: int) -> float:
        return float(self.lr(step) if callable(self.lr) else self.lr)

    def init(self, params: Mapping[str, Tensor]) -> AdamState:
        """Zero moments shaped like ``params``."""
        zeros = {k: torch.zeros_like(v) for k, v in params.items()}
        return AdamState(0, zeros, {k: torch.zeros_like(v) for k, v in params.items()})

    def update(
        self, grads: Mapping[str, Tensor], state: AdamState, params: Mapping[str, Tensor]
    ) -> tuple[dict[str, Tensor], AdamState]:
        """One step; returns new params and state (inputs untouched)."""
        if set(grads) != set(params):
            missing, extra = sorted(set(params) - set(grads)), sorted(set(grads) - set(params))
            raise KeyError(f"AdamW: grads and params differ: missing {missing[:5]}, extra {extra[:5]}.")
        keys = list(params)
        if not keys:
            return dict(params), state._replace(step=state.step + 1)
        lr = self.learning_rate(state.step)
        step = state.step + 1
        b1, b2 = self.betas
        with torch.no_grad():
            p = [params[k].detach() for k in keys]
            g = [grads[k].detach() for k in keys]
            m = torch._foreach_lerp([state.exp_avg[k] for k in keys], g, 1.0 - b1)
            v = torch._foreach_mul([state.exp_avg_sq[k] for k in keys], b2)
            torch._foreach_addcmul_(v, g, g, value=1.0 - b2)
            denom = torch._foreach_sqrt(v)
            torch._foreach_div_(denom, math.sqrt(1.0 - b2**step))
            torch._foreach_add_(denom, self.eps)
            new_p = torch._foreach_mul(p, 1.0 - lr * self.weight_decay)
            torch._foreach_addcdiv_(new_p, m, denom, value=-lr / (1.0 - b1**step))
        return (
            dict(zip(keys, new_p)),
            AdamState(step, dict(zip(keys, m)), dict(zip(keys, v))),
        )
