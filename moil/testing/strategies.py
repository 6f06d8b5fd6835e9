"""Hypothesis strategies for property tests of approximations.

Tensors are drawn from a *seed*: Hypothesis draws one integer and torch fills
the tensor from a ``torch.Generator`` seeded with it. That is fast at any size,
reproducible from the printed example, and shrinks toward seed 0 — at the price
of Hypothesis not shrinking individual entries.

Example:
  >>> from hypothesis import given
  >>> @given(weights(weight_shapes(2, 6)))
  ... def test_finite(w0):
  ...     assert w0.isfinite().all()
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from hypothesis import strategies as st
from torch import Tensor

from moil.approx import Hybrid, LowRank, Transform, on_side

__all__ = ["adapter_params", "approximations", "seeds", "weight_shapes", "weights"]

_MAX_SEED = 2**32 - 1
_SCALES = (1.0, 0.5, 2.0, -1.0)  # 0 is refused: it leaves W0 and a zero gradient


def seeds() -> st.SearchStrategy[int]:
    """Integers in ``[0, 2³²)`` for ``torch.Generator().manual_seed``."""
    return st.integers(min_value=0, max_value=_MAX_SEED)


def _randn(shape: tuple[int, ...], seed: int, dtype: torch.dtype, device, scale: float) -> Tensor:
    # Drawn in float64 on the CPU, then cast: one seed gives the same values
    # (up to rounding) whatever the dtype and device.
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    return out.to(dtype=dtype, device=device)


def weight_shapes(
    min_features: int = 1, max_features: int = 12
) -> st.SearchStrategy[tuple[int, int]]:
    """Weight shapes ``(out_features, in_features)``, each side in ``[min, max]``.

    Raises:
      ValueError: ``min_features < 1`` or ``max_features < min_features``.
    """
    if isinstance(min_features, bool) or not isinstance(min_features, int) or min_features < 1:
        raise ValueError(f"weight_shapes: min_features must be an int >= 1, got {min_features!r}.")
    if not isinstance(max_features, int) or max_features < min_features:
        raise ValueError(
            f"weight_shapes: max_features must be an int >= min_features={min_features}, "
            f"got max_features={max_features!r}."
        )
    side = st.integers(min_value=min_features, max_value=max_features)
    return st.tuples(side, side)


def weights(
    shape: tuple[int, ...] | st.SearchStrategy[tuple[int, ...]],
    dtype: torch.dtype = torch.float64,
    scale: float = 1.0,
    device: str | torch.device = "cpu",
) -> st.SearchStrategy[Tensor]:
    """Tensors of ``shape`` with i.i.d. ``N(0, scale²)`` entries, drawn from a seed.

    Args:
      shape: a shape, or a strategy of shapes (e.g. :func:`weight_shapes`).
      dtype: the tensors' dtype (values are drawn in float64, then cast).
      scale: standard deviation of the entries.
      device: where the tensors live.
    """
    if isinstance(shape, st.SearchStrategy):
        return shape.flatmap(lambda s: weights(s, dtype, scale, device))
    shape = tuple(int(n) for n in shape)
    return seeds().map(lambda seed: _randn(shape, seed, dtype, device, scale))


def approximations(
    max_rank: int = 4, sides: tuple[str, ...] = ("input", "output")
) -> st.SearchStrategy:
    """One of the built-in approximations with ranks in ``[1, max_rank]``.

    :class:`~moil.approx.LowRank` (various scales), the transform and the hybrid
    with the adapter on each side in ``sides`` (:class:`~moil.approx.Transform` /
    :class:`~moil.approx.OutputTransform`, :class:`~moil.approx.Hybrid` /
    :class:`~moil.approx.OutputHybrid`; ``transform_rank`` ``None`` or any rank).
    Use weights with both sides at least ``max_rank`` wide.

    Raises:
      ValueError: ``max_rank < 1`` or a side other than ``"input"``/``"output"``.
    """
    if isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 1:
        raise ValueError(f"approximations: max_rank must be an int >= 1, got {max_rank!r}.")
    transforms = [on_side(Transform, s) for s in sides]
    hybrids = [on_side(Hybrid, s) for s in sides]
    ranks = st.integers(min_value=1, max_value=max_rank)
    scales = st.sampled_from(_SCALES)
    return st.one_of(
        st.builds(LowRank, rank=ranks, scale=scales),
        st.sampled_from(transforms).flatmap(lambda cls: st.builds(cls, rank=ranks)),
        st.sampled_from(hybrids).flatmap(
            lambda cls: st.builds(cls, rank=ranks, transform_rank=st.none() | ranks, scale=scales)
        ),
    )


def adapter_params(
    approx, w0: Tensor, b0: Tensor | None = None, *, scale: float = 0.5
) -> st.SearchStrategy[dict[str, Tensor]]:
    """Random, *non-trivial* parameters for ``approx`` on ``w0``.

    Takes the keys and shapes of ``approx.init(w0, b0)`` and refills every tensor
    with ``N(0, scale²)`` entries in ``w0``'s dtype and device, so formulas are
    exercised away from the identity at init (where zero factors hide mistakes).
    """
    template: Mapping[str, Tensor] = approx.init(w0, b0)
    layout = [(k, tuple(v.shape)) for k, v in template.items()]

    def fill(seed: int) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(seed)
        return {
            k: (torch.randn(s, generator=g, dtype=torch.float64) * scale).to(w0) for k, s in layout
        }

    return seeds().map(fill)
