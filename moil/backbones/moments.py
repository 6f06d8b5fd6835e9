r"""The second moment ``Σ = E[x xᵀ]`` of every target layer's inputs, read from forwards.

A data-aware fit (:mod:`moil.solvers.data_aware`) needs, per target, the moment of
the inputs the layer actually sees. :func:`input_moments` runs the backbone's
ordinary pure forward and records the input of each ``F.linear`` call whose
weight *is* (by identity) one of the targets' weight tensors passed in ``params``
— a :class:`~torch.overrides.TorchFunctionMode`, so the model gets no hook, flag
or attribute, before, during or after.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["input_moments"]


class _LinearInputs(TorchFunctionMode):
    """Accumulates ``Σ_n x_n x_nᵀ`` (float64) per watched weight tensor."""

    def __init__(self, watched: Mapping[int, str]):
        super().__init__()
        self.watched = watched
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self._last: tuple[Tensor, Tensor, int] | None = None  # (x, xᵀx, n): q/k/v read one x

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            name = self.watched.get(id(weight))
            if name is not None:
                self._record(name, args[0] if args else kwargs["input"])
        return func(*args, **kwargs)

    def _record(self, name: str, x: Tensor) -> None:
        if self._last is not None and self._last[0] is x:
            gram, n = self._last[1], self._last[2]
        else:
            flat = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
            gram, n = flat.T @ flat, flat.shape[0]
            self._last = (x, gram, n)  # holding x keeps its address from being reused
        self.sums[name] = self.sums[name] + gram if name in self.sums else gram
        self.counts[name] = self.counts.get(name, 0) + n


@torch.no_grad()
def input_moments(
    backbone: Any, params: Mapping[str, Tensor], batches: Iterable[Mapping[str, Tensor]]
) -> dict[str, Tensor]:
    r"""``{"<t>.weight": Σ_t}``, ``Σ_t = (1/N) Σ_n x_n x_nᵀ`` over every input row of target ``t``.

    Every token (padding included: the layer computes on it) of every batch is one
    sample ``x_n`` of shape ``(in_t,)``. Targets that read the same tensor (a block's
    q/k/v) are computed once and get equal moments.

    Args:
      backbone: a :class:`~moil.backbones.Backbone`.
      params: overrides for the forward, e.g. the teacher's ``{"<t>.weight", "<t>.bias",
        heads}``; targets missing from it read ``backbone.base()``.
      batches: the batches to read (e.g. a slice of the training split).

    Returns:
      ``Σ_t`` of shape ``(in_t, in_t)``, float64, for every target.

    Raises:
      ValueError: no batch, or a target that no batch reached (names it).
    """
    base = backbone.base()
    weights = {f"{t}.weight": params.get(f"{t}.weight", base[f"{t}.weight"]) for t in backbone.targets}
    # Fresh views give every target its own identity, even where the caller passed one
    # tensor twice; the forward reads the same values.
    weights = {k: w.view_as(w) for k, w in weights.items()}
    mode = _LinearInputs({id(w): k for k, w in weights.items()})
    seen = 0
    for batch in batches:
        with mode:
            backbone({**params, **weights}, batch)
        mode._last = None
        seen += 1
    if not seen:
        raise ValueError("input_moments: batches is empty; pass at least one batch.")
    missing = [k for k in weights if k not in mode.sums]
    if missing:
        raise ValueError(
            f"input_moments: no input reached {missing[:3]}{' …' if len(missing) > 3 else ''} — "
            "the forward did not call F.linear with these weights (a fused or custom kernel?)."
        )
    return {k: mode.sums[k] / mode.counts[k] for k in weights}
