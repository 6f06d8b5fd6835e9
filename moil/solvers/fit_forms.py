"""Which adapters a closed-form fit can solve: checked from the adapter alone, before any tensor.

:class:`~moil.solvers.SVDFit` truncates each target's update, so it needs a
:class:`~moil.approx.LowRank` with its own ``lora_a`` per target; :class:`~moil.solvers.ALSFit`
alternates regressions on the input side, so it needs an input-side Transform / Hybrid whose
transform is shared in full or not at all. The fits call these checks, and so does
:meth:`moil.recipes.Imitation.build` (through each fit's ``check``), so a mismatch fails when a
run starts, not when the first fit runs (for a ``final_fit``, after the whole run).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from moil.approx import TRANSFORM_KEYS, Adapter, Hybrid, LowRank, Transform

__all__ = ["check_als_adapter", "check_finite", "check_low_rank_adapter"]


def check_finite(fit: str, adapter: Adapter, base: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> None:
    """Raise a ValueError naming the first ``"<t>.weight"``/``"<t>.bias"`` of ``base`` or
    ``target`` that holds a NaN or ±inf (an SVD of it fails with a LAPACK error, or fits NaN).

    One device sync in all: the per-key flags are stacked before they are read; the keys
    are looked at one by one only to name a bad one."""
    named = [(where, key, value) for t in adapter.targets for where, tensors in (("target", target), ("base", base))
             for key in (f"{t}.weight", f"{t}.bias") if (value := tensors.get(key)) is not None]
    if not named:
        return
    finite = torch.stack([torch.isfinite(v).all().to(named[0][2].device) for *_, v in named])
    if bool(finite.all()):
        return
    where, key, _ = named[int((~finite).nonzero()[0])]
    raise ValueError(
        f"{fit}: {where}[{key!r}] holds NaN or inf values; a closed-form fit needs "
        "finite weights — check the teacher's training (loss scale, learning rate)."
    )


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
