"""The contract every approximation function follows, and the checks they share.

An *approximation* says how a small stored adaptation parametrises an adapted
dense weight ``Ŵ`` (and bias ``b̂``) of one linear layer ``y = W0 x + b0`` with
``W0`` of shape ``(out_features, in_features)``. It is a function of weights,
not a layer: the backbone is never modified, the effective tensors are
computed and handed to ``torch.func.functional_call``.
"""

from __future__ import annotations

import math
from typing import Mapping, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "Approximation",
    "check_call",
    "check_rank",
    "check_params",
    "check_weight",
    "finite_scale",
    "kaiming_uniform",
    "positive_int",
    "size",
    "xavier_uniform",
]


@runtime_checkable
class Approximation(Protocol):
    """What moil needs from an approximation function.

    * ``shareable: frozenset[str]`` — names of parameters whose shape and role
      depend only on the layer's *input*, so layers reading the same input may
      share them (see :class:`moil.approx.Sharing`). May be empty.
    * ``shapes(out_features, in_features) -> dict[str, tuple[int, ...]]`` — the
      key and shape of every parameter ``init`` makes for an ``(out, in)`` weight;
      raises ``ValueError`` if a rank cannot be realised on it.
    * ``init(w0, b0=None, *, generator=None) -> dict[str, Tensor]`` — fresh
      adapter parameters of those shapes, on ``w0``'s device and dtype; with the
      reference initialisation ``weight(init(w0), w0) == w0`` exactly.
    * ``weight(params, w0) -> Tensor`` — ``Ŵ``, shape ``(out, in)``, dtype of ``w0``.
    * ``bias(params, w0, b0) -> Tensor | None`` — ``b̂``, shape ``(out,)``; ``None``
      only when ``b0`` is ``None`` and the approximation adds no bias.
    * ``weight_and_bias(params, w0, b0) -> (Ŵ, b̂)`` — both at once, equal to
      ``(weight(...), bias(...))``; what :meth:`moil.approx.Adapter.merge` calls, so
      an approximation may share work and checks between the two (``Hybrid``
      forms ``W0 + s·B A`` once).
    * ``num_params(out_features, in_features) -> int`` — stored parameters for
      one weight (the total size of ``shapes``).
    """

    shareable: frozenset[str]

    def shapes(self, out_features: int, in_features: int) -> dict[str, tuple[int, ...]]: ...

    def init(
        self, w0: Tensor, b0: Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]: ...

    def weight(self, params: Mapping[str, Tensor], w0: Tensor) -> Tensor: ...

    def bias(self, params: Mapping[str, Tensor], w0: Tensor, b0: Tensor | None) -> Tensor | None: ...

    def weight_and_bias(
        self, params: Mapping[str, Tensor], w0: Tensor, b0: Tensor | None
    ) -> tuple[Tensor, Tensor | None]: ...

    def num_params(self, out_features: int, in_features: int) -> int: ...


def positive_int(instance, attribute, value) -> None:
    """attrs validator: an integer ≥ 1 (a bool is refused); ``None`` too when it is the default."""
    if value is None and attribute.default is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{type(instance).__name__}: {attribute.name} must be an integer >= 1, got "
            f"{attribute.name}={value!r}. Use e.g. {attribute.name}=8."
        )


def finite_scale(instance, attribute, value) -> None:
    """attrs validator: a scale is a finite, non-zero real number (0 would freeze the adapter at W0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value == 0:
        raise ValueError(
            f"{type(instance).__name__}: {attribute.name} must be a finite non-zero number, got "
            f"{attribute.name}={value!r}; e.g. {attribute.name}=1.0 (0 leaves the weight at W0 and "
            "its gradient at 0)."
        )


def check_rank(name: str, rank: int, out_features: int, in_features: int) -> None:
    """Raise if a rank cannot be realised on an ``(out, in)`` weight.

    A rank above ``min(out, in)`` stores more numbers than a dense update and
    adds nothing a smaller rank could not express.
    """
    limit = min(out_features, in_features)
    if rank > limit:
        raise ValueError(
            f"{name}={rank} is larger than min(out_features, in_features)={limit} for a "
            f"weight of shape ({out_features}, {in_features}); choose {name} <= {limit}."
        )


def check_weight(w0: Tensor, b0: Tensor | None = None) -> tuple[int, int]:
    """Validate a pre-trained weight (and bias); return ``(out, in)``."""
    if not isinstance(w0, Tensor) or w0.ndim != 2:
        shape = tuple(w0.shape) if isinstance(w0, Tensor) else type(w0).__name__
        raise ValueError(
            f"w0 must be a 2-D weight of shape (out_features, in_features), got {shape}; "
            "pass a linear layer's .weight (reshape convolutions first)."
        )
    if not w0.is_floating_point():
        raise TypeError(f"w0 must be a floating-point tensor, got dtype {w0.dtype}.")
    if b0 is not None:
        if b0.shape != (w0.shape[0],):
            raise ValueError(
                f"b0 must have shape (out_features,)=({w0.shape[0]},) to match w0 of shape "
                f"{tuple(w0.shape)}, got {tuple(b0.shape)}."
            )
        if b0.dtype != w0.dtype or b0.device != w0.device:
            raise TypeError(
                f"b0 ({b0.dtype}, {b0.device}) must match w0 ({w0.dtype}, {w0.device}); "
                "cast them to one dtype and device first."
            )
    return w0.shape[0], w0.shape[1]


def check_params(
    owner: str, params: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]], w0: Tensor
) -> None:
    """Raise if ``params`` lacks a key or holds a tensor of the wrong shape, dtype or device.

    Args:
      owner: the approximation's name, for the message.
      params: adapter parameters as given by the user.
      shapes: the shape each required key must have for this ``w0``.
      w0: the pre-trained weight the params adapt, shape ``(out, in)``.
    """
    for key, shape in shapes.items():
        if key not in params:
            raise KeyError(
                f"{owner}: parameter {key!r} is missing (got keys {sorted(params)}); build "
                f"params with {owner}.init(w0) or load a checkpoint made for {owner}."
            )
        value = params[key]
        if tuple(value.shape) != shape:
            raise ValueError(
                f"{owner}: parameter {key!r} has shape {tuple(value.shape)}, expected {shape} "
                f"for a weight of shape {tuple(w0.shape)}; the params were made for another "
                "layer or another rank."
            )
        if value.dtype != w0.dtype or value.device != w0.device:
            raise TypeError(
                f"{owner}: parameter {key!r} is {value.dtype} on {value.device} but w0 is "
                f"{w0.dtype} on {w0.device}; move the params with "
                "{k: v.to(w0) for k, v in params.items()}."
            )


def check_call(
    approx: Approximation, params: Mapping[str, Tensor], w0: Tensor, b0: Tensor | None = None
) -> None:
    """Validate the inputs of one public ``weight``/``bias``/``weight_and_bias`` call, once:
    ``w0`` (and ``b0``) by :func:`check_weight`, then every parameter ``approx.shapes``
    names by :func:`check_params`. The formulas behind it run unchecked."""
    check_weight(w0, b0)
    check_params(type(approx).__name__, params, approx.shapes(*w0.shape), w0)


def kaiming_uniform(
    shape: tuple[int, int], like: Tensor, generator: torch.Generator | None
) -> Tensor:
    """``U(-1/√fan_in, 1/√fan_in)``: Kaiming-uniform with ``a = √5``, as ``nn.Linear``.

    gain = √(2 / (1 + a²)) = √(1/3), bound = gain·√(3 / fan_in) = 1/√fan_in.
    """
    bound = 1.0 / math.sqrt(shape[1])
    return _uniform(shape, bound, like, generator)


def xavier_uniform(shape: tuple[int, int], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """``U(-√(6/(fan_in + fan_out)), +…)`` (Glorot & Bengio, 2010)."""
    bound = math.sqrt(6.0 / (shape[0] + shape[1]))
    return _uniform(shape, bound, like, generator)


def _uniform(
    shape: tuple[int, int], bound: float, like: Tensor, generator: torch.Generator | None
) -> Tensor:
    # Draw on the generator's device (CPU generators cannot fill CUDA tensors), then move.
    device = generator.device if generator is not None else like.device
    out = torch.empty(shape, dtype=torch.float32, device=device)
    out.uniform_(-bound, bound, generator=generator)
    return out.to(device=like.device, dtype=like.dtype)


def zeros(shape: tuple[int, ...], like: Tensor) -> Tensor:
    return torch.zeros(shape, dtype=like.dtype, device=like.device)


def size(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """The number of stored values in tensors of ``shapes``: ``Σ_k Π shape_k``."""
    return sum(math.prod(s) for s in shapes.values())
