"""MoIL's hybrid approximation: a low-rank update composed with a linear adapter.

:class:`Hybrid` puts the adapter before the layer (the reference, on attention
q/k/v); :class:`OutputHybrid` after it (e.g. an MLP's second linear).
"""

from __future__ import annotations

from typing import ClassVar, Mapping

import attrs
import torch
from torch import Tensor

from moil.approx.low_rank import LowRank, low_rank_shapes, low_rank_weight
from moil.approx.protocol import (
    check_call,
    check_rank,
    check_weight,
    finite_scale,
    positive_int,
    size,
)
from moil.approx.transform import OutputTransform, Transform, transform_shapes

__all__ = ["Hybrid", "OutputHybrid", "on_side"]


@attrs.frozen
class _Composed:
    """``L = W0 + s·B A`` (:class:`LowRank`, rank ``r``), then the adapter ``_adapter``
    (rank ``r_t``) on ``L``: what both hybrids share. The inputs are checked once per
    public call; the two formulas run unchecked."""

    rank: int = attrs.field(validator=positive_int)
    transform_rank: int | None = attrs.field(default=None, validator=positive_int)
    scale: float = attrs.field(default=1.0, validator=finite_scale)

    _adapter: ClassVar[type[Transform] | type[OutputTransform]]

    @property
    def low_rank(self) -> LowRank:
        """The low-rank part, :class:`LowRank` ``(rank, scale)``."""
        return LowRank(rank=self.rank, scale=self.scale)

    @property
    def transform(self) -> Transform | OutputTransform:
        """The adapter part, of rank ``transform_rank or rank``."""
        return self._adapter(self.transform_rank or self.rank)

    def shapes(self, out_features: int, in_features: int) -> dict[str, tuple[int, ...]]:
        """Parameter shapes for an ``(out, in)`` weight: both parts' (low-rank first)."""
        # Name the offending field: the adapter part alone would call it "rank".
        r_t = self.transform_rank or self.rank
        check_rank("rank", self.rank, out_features, in_features)
        check_rank("transform_rank", r_t, out_features, in_features)
        return {
            **low_rank_shapes(self.rank, out_features, in_features),
            **transform_shapes(r_t, self._adapter._width(out_features, in_features)),
        }

    def init(
        self, w0: Tensor, b0: Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Fresh parameters of both parts (low-rank first, for a fixed generator order)."""
        self.shapes(*check_weight(w0, b0))
        return {
            **self.low_rank.init(w0, b0, generator=generator),
            **self.transform.init(w0, b0, generator=generator),
        }

    def weight(self, params: Mapping[str, Tensor], w0: Tensor) -> Tensor:
        """``Ŵ``, shape ``(out, in)``: the adapter applied to the low-rank weight ``L``."""
        check_call(self, params, w0)
        return self._adapter._weight(params, low_rank_weight(params, w0, self.scale))

    def bias(self, params: Mapping[str, Tensor], w0: Tensor, b0: Tensor | None) -> Tensor:
        """``b̂``, shape ``(out,)``."""
        return self.weight_and_bias(params, w0, b0)[1]

    def weight_and_bias(
        self, params: Mapping[str, Tensor], w0: Tensor, b0: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """``(Ŵ, b̂)``, forming ``L`` once and checking the inputs once."""
        check_call(self, params, w0, b0)
        low = low_rank_weight(params, w0, self.scale)
        return self._adapter._weight(params, low), self._adapter._bias(params, low, b0)

    def num_params(self, out_features: int, in_features: int) -> int:
        """The sum of both parts' counts."""
        return size(self.shapes(out_features, in_features))


@attrs.frozen
class Hybrid(_Composed):
    r"""``Ŵ = (W0 + s·B A)(I + U D)`` — MoIL's hybrid approximation function.

    With ``L = W0 + s·B A`` (:class:`LowRank`, rank ``r``) and the adapter
    ``(D, a, U, c)`` before the layer (:class:`Transform`, rank ``r_t``):
    ``Ŵ = L (I + U D)``,  ``b̂ = L (U a + c) + b0``.

    The parameters are the union of :class:`LowRank`'s (``lora_a`` ``(r, in)``,
    ``lora_b`` ``(out, r)``) and :class:`Transform`'s (``d = in``); at init ``Ŵ = W0``.
    With the transform at zero (``U = 0``, ``a = 0``, ``c = 0``) it equals
    :class:`LowRank` on the same ``lora_*`` parameters, so its best fit is never worse
    than the best low-rank fit. ``lora_a`` and the transform depend on the input
    alone (shareable by q/k/v). Reference: Luo et al., "MoIL", TPAMI 2025 (ranks
    96/96 on ViLT-B/32).

    Args:
      rank: low-rank ``r ≥ 1``.
      transform_rank: adapter rank ``r_t``; ``None`` means ``r_t = r``.
      scale: ``s`` on the low-rank part (reference 1).
    """

    _adapter: ClassVar[type[Transform]] = Transform
    shareable: ClassVar[frozenset[str]] = LowRank.shareable | Transform.shareable


@attrs.frozen
class OutputHybrid(_Composed):
    r"""``Ŵ = (I + U D)(W0 + s·B A)`` — the hybrid with the adapter after the layer.

    With ``L = W0 + s·B A`` and the adapter on the layer's output
    (:class:`OutputTransform`, ``d = out``): ``Ŵ = (I + U D) L``,
    ``b̂ = (I + U D) b0 + U a + c``. Parameters and arguments (``rank``,
    ``transform_rank``, ``scale``) as :class:`Hybrid`, the transform's width ``out``;
    only ``lora_a`` is shareable.
    """

    _adapter: ClassVar[type[OutputTransform]] = OutputTransform
    shareable: ClassVar[frozenset[str]] = LowRank.shareable | OutputTransform.shareable


_SIDES = {
    "input": {Transform: Transform, Hybrid: Hybrid},
    "output": {Transform: OutputTransform, Hybrid: OutputHybrid},
}


def on_side(cls: type, side: str) -> type:
    """The variant of ``cls`` (:class:`Transform` or :class:`Hybrid`) with the adapter on ``side``.

    ``on_side(Hybrid, "output") is OutputHybrid``; ``"input"`` gives ``cls`` itself.
    For configuration files that name the side as a string.

    Raises:
      ValueError: ``side`` is not ``"input"`` or ``"output"``, or ``cls`` has no sides.
    """
    if side not in _SIDES:
        raise ValueError(
            f"on_side: side must be 'input' (adapter before the layer) or 'output' (after it), "
            f"got side={side!r}."
        )
    if cls not in _SIDES[side]:
        raise ValueError(
            f"on_side: {getattr(cls, '__name__', cls)!r} has no sides; pass Transform or Hybrid."
        )
    return _SIDES[side][cls]
