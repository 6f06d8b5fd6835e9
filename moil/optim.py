"""A pure AdamW, kept outside every loss (learning-rate schedules: :mod:`moil.schedules`).

``AdamW.init(params) -> AdamState``; ``AdamW.update(grads, state, params) ->
(new_params, new_state)``. Parameters, gradients and moments are plain
``dict[str, Tensor]``; the update runs torch's fused AdamW kernel on fresh copies
(``torch._foreach_*`` kernels where it has none) and returns new tensors, so a step
that turns out to be bad (a NaN loss) leaves the old state intact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import attrs
import torch
from torch import Tensor

from moil.schedules import Schedule, bounds_of

__all__ = ["AdamState", "AdamW"]


def _learning_rate(instance, attribute, value) -> None:
    if callable(value):
        bounds = bounds_of(value)
        if bounds is not None and bounds[0] < 0:
            raise ValueError(
                f"AdamW: the lr schedule {value!r} goes below 0 (lowest {bounds[0]!r}); learning rates are "
                ">= 0, e.g. lr=moil.schedules.WarmupLinearDecay(1e-3)."
            )
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"AdamW: lr must be a number or a schedule step -> lr, got lr={value!r}; e.g. lr=1e-3 "
            "or lr=moil.schedules.WarmupLinearDecay(1e-3)."
        )
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"AdamW: lr must be a finite number >= 0, got lr={value!r}; e.g. lr=1e-3.")


def _non_negative(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{type(instance).__name__}: {attribute.name} must be a finite number >= 0, got "
            f"{attribute.name}={value!r}; e.g. {attribute.name}={attribute.default!r} (the default)."
        )


def _sqrt_floor(eps: float, v: list[Tensor]) -> float | None:
    """A ``f`` with ``fl(√max(v, f) + ε) = fl(√v + ε)`` bitwise for every ``v ≥ 0``, or ``None``.

    ``√f = ε·u/8`` (``u``: the dtype's machine epsilon) is under half an ulp of ``ε``, so for
    ``v < f`` both sums round to ``ε`` itself. The clamp is for speed: on x86 CPUs
    ``torch.sqrt`` of zeros and near-subnormal numbers runs ≈20× slower than of normal ones,
    and a student's second moments start at zero and stay below 1e-30 for many steps
    (``benchmarks/imitation_profile.py``). ``None`` (no clamp) where ``f`` would not be a
    normal number of the moments' one floating dtype (``ε = 0``, fp16, mixed dtypes).
    """
    dtypes = {t.dtype for t in v}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        return None
    info = torch.finfo(next(iter(dtypes)))
    floor = (eps * info.eps / 8) ** 2
    return floor if floor >= info.tiny else None


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

    lr: float | Schedule = attrs.field(default=1e-4, validator=_learning_rate)
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.98), converter=tuple)
    eps: float = attrs.field(default=1e-8, validator=_non_negative)
    weight_decay: float = attrs.field(default=0.01, validator=_non_negative)

    @betas.validator
    def _check_betas(self, attribute, value) -> None:
        if len(value) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in value):
            raise ValueError(f"AdamW: betas must be two numbers in [0, 1), got betas={value!r}; e.g. betas=(0.9, 0.98).")

    def learning_rate(self, step: int) -> float:
        """``η`` at update ``step`` (0-based); a schedule's value is checked here."""
        lr = float(self.lr(step)) if callable(self.lr) else float(self.lr)
        if not (math.isfinite(lr) and lr >= 0):
            raise ValueError(f"AdamW: the lr schedule {self.lr!r} gave lr={lr!r} at step {step}; need a finite lr >= 0.")
        return lr

    def init(self, params: Mapping[str, Tensor]) -> AdamState:
        """Zero moments shaped like ``params``."""
        zeros = {k: torch.zeros_like(v) for k, v in params.items()}
        return AdamState(0, zeros, {k: torch.zeros_like(v) for k, v in params.items()})

    def update(
        self,
        grads: Mapping[str, Tensor],
        state: AdamState,
        params: Mapping[str, Tensor],
        *,
        lr: float | None = None,
    ) -> tuple[dict[str, Tensor], AdamState]:
        """One step; returns new params and state (inputs untouched).

        ``lr`` overrides the schedule's ``η`` for this step (the imitation solver takes
        ``k`` updates per task step, all at the task step's rate)."""
        if set(grads) != set(params):
            missing, extra = sorted(set(params) - set(grads)), sorted(set(grads) - set(params))
            raise KeyError(f"AdamW: grads and params differ: missing {missing[:5]}, extra {extra[:5]}.")
        keys = list(params)
        if not keys:
            return dict(params), state._replace(step=state.step + 1)
        lr = self.learning_rate(state.step) if lr is None else lr
        step = state.step + 1
        with torch.no_grad():
            p = [params[k].detach() for k in keys]
            g = [grads[k].detach() for k in keys]
            m0 = [state.exp_avg[k].detach() for k in keys]
            v0 = [state.exp_avg_sq[k].detach() for k in keys]
            step_ = _fused_step if _fusable(p, g, m0, v0) else _foreach_step
            new_p, m, v = step_(p, g, m0, v0, lr=lr, step=step, betas=self.betas, eps=self.eps, wd=self.weight_decay)
        return (
            dict(zip(keys, new_p)),
            AdamState(step, dict(zip(keys, m)), dict(zip(keys, v))),
        )


_FUSED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _fusable(*lists: list[Tensor]) -> bool:
    """Whether ``torch._fused_adamw_`` takes these: one CPU/CUDA device, one float dtype, and
    not under ``torch.compile`` (its functionalisation rejects the kernel's in-place step
    on tensors made inside the graph; the foreach kernels compile)."""
    first = lists[0][0]
    return (
        hasattr(torch, "_fused_adamw_")
        and not torch.compiler.is_compiling()
        and first.device.type in ("cpu", "cuda")
        and first.dtype in _FUSED_DTYPES
        and all(t.device == first.device and t.dtype == first.dtype for ts in lists for t in ts)
    )


def _fused_step(p, g, m0, v0, *, lr, step, betas, eps, wd):
    """One AdamW step in torch's fused kernel (``torch.optim.AdamW(fused=True)``'s), on new
    tensors: ``p(1 − ηλ)``, ``m`` and ``v`` are fresh copies the kernel then updates in place.
    Four passes over the parameters where :func:`_foreach_step` takes eight (about half
    the time on a CPU, ``benchmarks/imitation_profile.py``)."""
    new_p = torch._foreach_mul(p, 1.0 - lr * wd)
    m, v = [t.clone() for t in m0], [t.clone() for t in v0]
    steps = [torch.tensor(float(step), dtype=torch.float32, device=p[0].device)] * len(p)  # read only
    torch._fused_adamw_(
        new_p, g, m, v, [], steps, lr=lr, beta1=betas[0], beta2=betas[1], weight_decay=0.0,
        eps=eps, amsgrad=False, maximize=False,
    )
    return new_p, m, v


def _foreach_step(p, g, m0, v0, *, lr, step, betas, eps, wd):
    """The same step in ``torch._foreach_*`` kernels (any device and dtype), on new tensors."""
    b1, b2 = betas
    m = torch._foreach_lerp(m0, g, 1.0 - b1)
    v = torch._foreach_mul(v0, b2)
    torch._foreach_addcmul_(v, g, g, value=1.0 - b2)
    # m̂/(√v̂ + ε) = (√c₂/c₁)·m/(√v + ε√c₂) with cᵢ = 1 − βᵢᵗ: one pass fewer than
    # dividing √v by √c₂.
    c2 = math.sqrt(1.0 - b2**step)
    floor = _sqrt_floor(eps * c2, v)
    denom = torch._foreach_sqrt(v) if floor is None else torch._foreach_clamp_min(v, floor)
    if floor is not None:
        torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, eps * c2)
    new_p = torch._foreach_mul(p, 1.0 - lr * wd)
    torch._foreach_addcdiv_(new_p, m, denom, value=-lr * c2 / (1.0 - b1**step))
    return new_p, m, v
