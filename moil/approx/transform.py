"""Multiplicative approximation: a RepAdapter-style linear adapter merged into ``W0``.

The adapter ``x ↦ x + U(D x + a) + c`` (Luo et al., "Towards efficient visual
adaption via structural re-parameterization", 2023) is linear, so a linear
layer behind it is again a linear layer: MoIL's "transformation adaption".
"""

from __future__ import annotations

import math
from typing import Literal, Mapping

import attrs
import torch
from torch import Tensor

from moil.approx.protocol import (
    check_params,
    check_rank,
    check_weight,
    positive_rank,
    xavier_uniform,
    zeros,
)

__all__ = ["Transform", "TRANSFORM_KEYS"]

TRANSFORM_KEYS = ("transform_down", "transform_down_bias", "transform_up", "transform_up_bias")


@attrs.frozen
class Transform:
    r"""``Ŵ = W0 (I + U D)`` (input side) or ``Ŵ = (I + U D) W0`` (output side).

    Input side (the adapter sits before the layer, on its input ``x``):

      ``Ŵ = W0 (I + U D) = W0 + (W0 U) D``,  ``b̂ = W0 (U a + c) + b0``.

    Output side (the adapter sits after the layer, e.g. an MLP's second linear):

      ``Ŵ = (I + U D) W0 = W0 + U (D W0)``,  ``b̂ = (I + U D) b0 + U a + c``.

    Shapes, with ``d = in`` on the input side and ``d = out`` on the output side:
    ``transform_down`` = ``D`` ``(r, d)`` Xavier-uniform; ``transform_down_bias`` =
    ``a`` ``(r,)``; ``transform_up`` = ``U`` ``(d, r)``; ``transform_up_bias`` =
    ``c`` ``(d,)`` — the last three zeros, so ``Ŵ = W0`` and ``b̂ = b0`` at init. A
    layer without bias gets ``b̂`` computed with ``b0 = 0`` (a new bias, zero at init).

    The products are ordered so no ``d × d`` matrix is formed: cost ``O(out·in·r)``.

    Args:
      rank: ``r ≥ 1``, at most ``min(out, in)``.
      side: ``"input"`` (default; shareable by layers that read the same input)
        or ``"output"``.
    """

    rank: int = attrs.field(validator=positive_rank)
    side: Literal["input", "output"] = attrs.field(
        default="input", validator=attrs.validators.in_(("input", "output"))
    )

    @property
    def shareable(self) -> frozenset[str]:
        # On the input side every parameter depends only on the input.
        return frozenset(TRANSFORM_KEYS) if self.side == "input" else frozenset()

    def shapes(self, out_features: int, in_features: int) -> dict[str, tuple[int, ...]]:
        """Parameter shapes for an ``(out, in)`` weight."""
        check_rank("rank", self.rank, out_features, in_features)
        d = in_features if self.side == "input" else out_features
        r = self.rank
        return {
            "transform_down": (r, d),
            "transform_down_bias": (r,),
            "transform_up": (d, r),
            "transform_up_bias": (d,),
        }

    def init(
        self, w0: Tensor, b0: Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Fresh ``D`` (Xavier-uniform) and zero ``a``, ``U``, ``c``, like ``w0``."""
        shapes = self.shapes(*check_weight(w0, b0))
        params = {k: zeros(s, w0) for k, s in shapes.items()}
        params["transform_down"] = xavier_uniform(shapes["transform_down"], w0, generator)
        return params

    def weight(self, params: Mapping[str, Tensor], w0: Tensor) -> Tensor:
        """``Ŵ``, shape ``(out, in)``."""
        check_weight(w0)
        check_params("Transform", params, self.shapes(*w0.shape), w0)
        down, up = params["transform_down"], params["transform_up"]
        if self.side == "input":
            return torch.addmm(w0, w0 @ up, down)
        return torch.addmm(w0, up, down @ w0)

    def bias(self, params: Mapping[str, Tensor], w0: Tensor, b0: Tensor | None) -> Tensor:
        """``b̂``, shape ``(out,)`` — never ``None``: the adapter's shift is a bias."""
        check_weight(w0, b0)
        check_params("Transform", params, self.shapes(*w0.shape), w0)
        down, up = params["transform_down"], params["transform_up"]
        a, c = params["transform_down_bias"], params["transform_up_bias"]
        if self.side == "input":
            shift = torch.addmv(c, up, a)  # U a + c, shape (in,)
            return w0 @ shift if b0 is None else torch.addmv(b0, w0, shift)
        inner = a if b0 is None else torch.addmv(a, down, b0)  # D b0 + a, shape (r,)
        out = torch.addmv(c, up, inner)  # U (D b0 + a) + c
        return out if b0 is None else out + b0

    def num_params(self, out_features: int, in_features: int) -> int:
        """``2·r·d + r + d`` with ``d`` the adapted side's width."""
        return sum(math.prod(s) for s in self.shapes(out_features, in_features).values())
