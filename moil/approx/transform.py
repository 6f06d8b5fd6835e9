"""Multiplicative approximation: a RepAdapter-style linear adapter merged into ``W0``.

The adapter ``x ↦ x + U(D x + a) + c`` (Luo et al., "Towards efficient visual
adaption via structural re-parameterization", 2023) is linear, so a linear
layer behind it (or in front of it) is again a linear layer: MoIL's
"transformation adaption". Two classes, one per place of the adapter:
:class:`Transform` before the layer (on its input, the reference, shareable by
layers that read one input) and :class:`OutputTransform` after it.
"""

from __future__ import annotations

from typing import ClassVar, Mapping

import attrs
import torch
from torch import Tensor

from moil.approx.protocol import (
    check_call,
    check_rank,
    check_weight,
    positive_int,
    size,
    xavier_uniform,
    zeros,
)

__all__ = ["Transform", "OutputTransform", "TRANSFORM_KEYS", "transform_shapes"]

TRANSFORM_KEYS = ("transform_down", "transform_down_bias", "transform_up", "transform_up_bias")


def transform_shapes(rank: int, width: int) -> dict[str, tuple[int, ...]]:
    """``D (r, d)``, ``a (r,)``, ``U (d, r)``, ``c (d,)`` for an adapter of width ``d`` (unchecked)."""
    return {
        "transform_down": (rank, width),
        "transform_down_bias": (rank,),
        "transform_up": (width, rank),
        "transform_up_bias": (width,),
    }


@attrs.frozen
class _Sided:
    """What both places of the adapter share: ``D, a, U, c`` of width ``d = _width(out, in)``,
    their init, count and checks. Subclasses give ``_width``, ``_weight`` and ``_bias``."""

    rank: int = attrs.field(validator=positive_int)

    shareable: ClassVar[frozenset[str]] = frozenset()

    @staticmethod
    def _width(out_features: int, in_features: int) -> int:
        raise NotImplementedError

    @staticmethod
    def _weight(params: Mapping[str, Tensor], w: Tensor) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def _bias(params: Mapping[str, Tensor], w: Tensor, b0: Tensor | None) -> Tensor:
        raise NotImplementedError

    def shapes(self, out_features: int, in_features: int) -> dict[str, tuple[int, ...]]:
        """Parameter shapes for an ``(out, in)`` weight."""
        check_rank("rank", self.rank, out_features, in_features)
        return transform_shapes(self.rank, self._width(out_features, in_features))

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
        check_call(self, params, w0)
        return self._weight(params, w0)

    def bias(self, params: Mapping[str, Tensor], w0: Tensor, b0: Tensor | None) -> Tensor:
        """``b̂``, shape ``(out,)`` — never ``None``: the adapter's shift is a bias."""
        check_call(self, params, w0, b0)
        return self._bias(params, w0, b0)

    def weight_and_bias(
        self, params: Mapping[str, Tensor], w0: Tensor, b0: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """``(Ŵ, b̂)``, the inputs checked once."""
        check_call(self, params, w0, b0)
        return self._weight(params, w0), self._bias(params, w0, b0)

    def num_params(self, out_features: int, in_features: int) -> int:
        """``2·r·d + r + d`` with ``d`` the adapter's width."""
        return size(self.shapes(out_features, in_features))


@attrs.frozen
class Transform(_Sided):
    r"""``Ŵ = W0 (I + U D)``, ``b̂ = W0 (U a + c) + b0`` — the adapter before the layer.

    The layer reads ``x' = x + U(D x + a) + c``, so ``W0 x' + b0 = Ŵ x + b̂`` with
    ``Ŵ = W0 + (W0 U) D`` and ``b̂ = W0 (U a + c) + b0``. Shapes, ``d = in``:
    ``transform_down`` = ``D`` ``(r, in)`` Xavier-uniform; ``transform_down_bias`` =
    ``a`` ``(r,)``; ``transform_up`` = ``U`` ``(in, r)``; ``transform_up_bias`` = ``c``
    ``(in,)`` — the last three zeros, so ``Ŵ = W0`` and ``b̂ = b0`` at init. A layer
    without bias gets ``b̂`` computed with ``b0 = 0`` (a new bias, zero at init). Every
    parameter depends on the input alone, so layers reading one input may share all
    four (q/k/v, :data:`TRANSFORM_KEYS`). Products are ordered so no ``in × in``
    matrix is formed: cost ``O(out·in·r)``.

    Args:
      rank: ``r ≥ 1``, at most ``min(out, in)``.
    """

    shareable: ClassVar[frozenset[str]] = frozenset(TRANSFORM_KEYS)

    @staticmethod
    def _width(out_features: int, in_features: int) -> int:
        return in_features

    @staticmethod
    def _weight(params: Mapping[str, Tensor], w: Tensor) -> Tensor:
        return torch.addmm(w, w @ params["transform_up"], params["transform_down"])

    @staticmethod
    def _bias(params: Mapping[str, Tensor], w: Tensor, b0: Tensor | None) -> Tensor:
        up, a, c = params["transform_up"], params["transform_down_bias"], params["transform_up_bias"]
        shift = torch.addmv(c, up, a)  # U a + c, shape (in,)
        return w @ shift if b0 is None else torch.addmv(b0, w, shift)  # W (U a + c) + b0


@attrs.frozen
class OutputTransform(_Sided):
    r"""``Ŵ = (I + U D) W0``, ``b̂ = (I + U D) b0 + U a + c`` — the adapter after the layer.

    The adapter reads the layer's output ``y = W0 x + b0`` (e.g. an MLP's second
    linear): ``y + U(D y + a) + c = Ŵ x + b̂`` with ``Ŵ = W0 + U (D W0)``. Shapes as
    :class:`Transform` with ``d = out``; nothing is shareable (every parameter has
    the output's width). A layer without bias gets ``b̂ = U a + c``.

    Args:
      rank: ``r ≥ 1``, at most ``min(out, in)``.
    """

    @staticmethod
    def _width(out_features: int, in_features: int) -> int:
        return out_features

    @staticmethod
    def _weight(params: Mapping[str, Tensor], w: Tensor) -> Tensor:
        return torch.addmm(w, params["transform_up"], params["transform_down"] @ w)

    @staticmethod
    def _bias(params: Mapping[str, Tensor], w: Tensor, b0: Tensor | None) -> Tensor:
        down, up = params["transform_down"], params["transform_up"]
        a, c = params["transform_down_bias"], params["transform_up_bias"]
        inner = a if b0 is None else torch.addmv(a, down, b0)  # D b0 + a, shape (r,)
        out = torch.addmv(c, up, inner)  # U (D b0 + a) + c
        return out if b0 is None else out + b0
