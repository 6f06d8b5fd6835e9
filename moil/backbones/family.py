"""Shared plumbing of the family modules (:mod:`~moil.backbones.vilt`, …)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from moil.backbones.targets import Patterns

__all__ = ["family_patterns", "task_of", "seeded"]


def family_patterns(qkv: str, mlp_pattern: str, targets: Patterns | None, mlp: bool) -> Patterns:
    """A family's target patterns: ``qkv`` (plus ``mlp_pattern`` if ``mlp``) unless
    the user gave ``targets``."""
    if targets is None:
        return f"(?:{qkv})|(?:{mlp_pattern})" if mlp else qkv
    if mlp:
        raise ValueError(
            "pass either targets=... or mlp=True, not both: mlp=True adds the MLP linears to the "
            "default q/k/v targets; with your own targets, list the MLP layers in them."
        )
    return targets


def task_of(model: nn.Module, table: Mapping[type, Any], family: str) -> Any:
    """The entry of ``table`` for ``model``'s class (``isinstance``), or a clear error."""
    for cls, spec in table.items():
        if isinstance(model, cls):
            return spec
    names = [c.__name__ for c in table]
    raise TypeError(
        f"moil.backbones.{family}: got a {type(model).__name__}; supported task models are "
        f"{names}. For any other model use moil.backbones.from_model(model, targets, heads, ...)."
    )


def seeded(cls: type, config: Any, seed: int) -> nn.Module:
    """``cls(config)`` with weights drawn from ``torch.manual_seed(seed)``, in eval mode;
    the global RNG state is restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    return model.eval()
