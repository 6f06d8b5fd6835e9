"""MoIL's hybrid approximation: a low-rank update composed with a linear adapter."""

from __future__ import annotations

from typing import Literal, Mapping

import attrs
import torch
from torch import Tensor

from moil.approx.low_rank import LowRank
from moil.approx.protocol import check_rank, check_weight, finite_scale, positive_rank
from moil.approx.transform import Transform

__all__ = ["Hybrid"]


@attrs.frozen
class Hybrid:
    r"""``Ŵ = (W0 + B A)(I + U D)`` — MoIL's hybrid approximation function.

    With ``L = W0 + s·B A`` (:class:`LowRank`, rank ``r``) and the adapter
    ``(D, a, U, c)`` (:class:`Transform`, rank ``r_t``):

    * input side (reference, attention q/k/v):
      ``Ŵ = L (I + U D)``,  ``b̂ = L (U a + c) + b0``;
    * output side (an MLP's second linear):
      ``Ŵ = (I + U D) L``,  ``b̂ = (I + U D) b0 + U a + c``.

    The parameters are the union of :class:`LowRank`'s (``lora_a`` ``(r, in)``,
    ``lora_b`` ``(out, r)``) and :class:`Transform`'s; at init ``Ŵ = W0``. With the
    transform at zero (``U = 0``, ``a = 0``, ``c = 0``) it equals :class:`LowRank`
    on the same ``lora_*`` parameters, so its best fit is never worse than the
    best low-rank fit. Reference: Luo et al., "MoIL", TPAMI 2025 (ranks 96/96 on
    ViLT-B/32).

    Args:
      rank: low-rank ``r ≥ 1``.
      transform_rank: adapter rank ``r_t``; ``None`` means ``r_t = r``.
      side: ``"input"`` or ``"output"``, where the adapter sits.
      scale: ``s`` on the low-rank part (reference 1).
    """

    rank: int = attrs.field(validator=positive_rank)
    transform_rank: int | None = attrs.field(default=None, validator=positive_rank)
    side: Literal["input", "output"] = attrs.field(
        default="input", validator=attrs.validators.in_(("input", "output"))
    )
    scale: float = attrs.field(default=1.0, validator=finite_scale)

    @property
    def low_rank(self) -> LowRank:
        return LowRank(rank=self.rank, scale=self.scale)

    @property
    def transform(self) -> Transform:
        return Transform(rank=self.transform_rank or self.rank, side=self.side)

    @property
    def shareable(self) -> frozenset[str]:
        return self.low_rank.shareable | self.transform.shareable

    def shapes(self, out_features: int, in_features: int) -> dict[str, tuple[int, ...]]:
        """Parameter shapes for an ``(out, in)`` weight."""
        # Name the offending field: the Transform part alone would call it "rank".
        check_rank("rank", self.rank, out_features, in_features)
        check_rank("transform_rank", self.transform.rank, out_features, in_features)
        return {
            **self.low_rank.shapes(out_features, in_features),
            **self.transform.shapes(out_features, in_features),
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
        """``Ŵ``, shape ``(out, in)``: the transform applied to the low-rank weight."""
        return self.transform.weight(params, self.low_rank.weight(params, w0))

    def bias(self, params: Mapping[str, Tensor], w0: Tensor, b0: Tensor | None) -> Tensor:
        """``b̂``, shape ``(out,)``."""
        return self.weight_and_bias(params, w0, b0)[1]

    def weight_and_bias(
        self, params: Mapping[str, Tensor], w0: Tensor, b0: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """``(Ŵ, b̂)`` computing the low-rank weight ``L`` once."""
        check_weight(w0, b0)
        low = self.low_rank.weight(params, w0)
        return self.transform.weight(params, low), self.transform.bias(params, low, b0)

    def num_params(self, out_features: int, in_features: int) -> int:
        return self.low_rank.num_params(out_features, in_features) + self.transform.num_params(
            out_features, in_features
        )
