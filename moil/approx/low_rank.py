"""Additive low-rank approximation (LoRA's parametrisation; MoIL's "bias adaption")."""

from __future__ import annotations

from typing import Mapping

import attrs
import torch
from torch import Tensor

from moil.approx.protocol import (
    check_call,
    check_rank,
    check_weight,
    finite_scale,
    kaiming_uniform,
    positive_int,
    size,
    zeros,
)

__all__ = ["LowRank", "low_rank_shapes", "low_rank_weight"]


def low_rank_shapes(rank: int, out_features: int, in_features: int) -> dict[str, tuple[int, ...]]:
    """``{"lora_a": (r, in), "lora_b": (out, r)}`` (unchecked)."""
    return {"lora_a": (rank, in_features), "lora_b": (out_features, rank)}


def low_rank_weight(params: Mapping[str, Tensor], w0: Tensor, scale: float) -> Tensor:
    """``W0 + s·B A``, shape ``(out, in)``, unchecked: one fused ``addmm``, no temporaries."""
    return torch.addmm(w0, params["lora_b"], params["lora_a"], alpha=scale)


@attrs.frozen
class LowRank:
    r"""``Ŵ = W0 + s·B A`` — an additive rank-``r`` update.

    Shapes: ``W0`` ``(out, in)``; ``lora_a`` = ``A`` ``(r, in)``, Kaiming-uniform
    (a = √5); ``lora_b`` = ``B`` ``(out, r)``, zeros, so ``Ŵ = W0`` at init. The bias
    is not adapted: ``b̂ = b0``. MoIL's reference uses ``s = 1`` (no α/r scaling);
    LoRA (Hu et al., 2021) uses ``s = α/r``.

    Args:
      rank: ``r ≥ 1``, at most ``min(out, in)``.
      scale: ``s``, a finite float.

    Example:
      >>> w0 = torch.randn(6, 5)
      >>> a = LowRank(rank=2)
      >>> torch.equal(a.weight(a.init(w0), w0), w0)
      True
    """

    rank: int = attrs.field(validator=positive_int)
    scale: float = attrs.field(default=1.0, validator=finite_scale)

    shareable = frozenset({"lora_a"})  # A reads only the input side.

    def shapes(self, out_features: int, in_features: int) -> dict[str, tuple[int, ...]]:
        """Parameter shapes for an ``(out, in)`` weight."""
        check_rank("rank", self.rank, out_features, in_features)
        return low_rank_shapes(self.rank, out_features, in_features)

    def init(
        self, w0: Tensor, b0: Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Fresh ``{"lora_a": (r, in), "lora_b": (out, r)}`` on ``w0``'s device and dtype."""
        shapes = self.shapes(*check_weight(w0, b0))
        return {
            "lora_a": kaiming_uniform(shapes["lora_a"], w0, generator),
            "lora_b": zeros(shapes["lora_b"], w0),
        }

    def weight(self, params: Mapping[str, Tensor], w0: Tensor) -> Tensor:
        """``W0 + s·B A``, shape ``(out, in)``."""
        check_call(self, params, w0)
        return low_rank_weight(params, w0, self.scale)

    def bias(self, params: Mapping[str, Tensor], w0: Tensor, b0: Tensor | None) -> Tensor | None:
        """``b0`` unchanged (``None`` stays ``None``)."""
        check_weight(w0, b0)
        return b0

    def weight_and_bias(
        self, params: Mapping[str, Tensor], w0: Tensor, b0: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """``(W0 + s·B A, b0)``, through :meth:`weight` and :meth:`bias` (a subclass
        overriding either is merged as it computes)."""
        return self.weight(params, w0), self.bias(params, w0, b0)

    def num_params(self, out_features: int, in_features: int) -> int:
        """``r·(in + out)``."""
        return size(self.shapes(out_features, in_features))
