"""Gradients of a scalar with respect to a tree of tensors, on fresh autograd leaves."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["leaf_gradients"]


def leaf_gradients(
    loss: Callable[[Any], tuple[Tensor, Any]], tree: Mapping[str, Any]
) -> tuple[Any, Tensor, Any]:
    """``(∇ loss, loss, aux)`` for ``loss(leaves) -> (scalar, aux)`` over a tree of tensors.

    ``tree`` is a dict of tensors or a dict of such dicts. The gradient is taken with
    ``torch.autograd.grad`` on fresh leaves (detached aliases — no copy, nothing of the
    caller's changes): for a transformer this keeps about half the activation memory
    ``torch.func.grad`` does and gives the same gradients. A tensor the loss does not
    read gets a zero gradient. ``aux`` comes back detached.
    """
    nested = any(isinstance(v, Mapping) for v in tree.values())
    groups = tree if nested else {"": tree}
    leaves = {g: {k: v.detach().requires_grad_(True) for k, v in t.items()} for g, t in groups.items()}
    flat = [v for t in leaves.values() for v in t.values()]
    with torch.enable_grad():
        value, aux = loss(leaves if nested else leaves[""])
        grads = iter(torch.autograd.grad(value, flat, allow_unused=True))
    out = {g: {k: _or_zeros(next(grads), v) for k, v in t.items()} for g, t in leaves.items()}
    aux = {k: v.detach() for k, v in aux.items()} if isinstance(aux, Mapping) else aux
    return (out if nested else out[""]), value.detach(), aux


def _or_zeros(grad: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad
