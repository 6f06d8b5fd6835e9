"""The imitation split across ranks by target: who owns what, and gathering it back.

A *unit* is a set of target layers that must stay on one rank: a target alone, or the
members of a sharing group of any student (the transform shared by q, k, v is fitted
from all three). Units are dealt to ranks by size, largest first, each to the
least-loaded rank (ties: the lower rank) — a pure function of the model and the
students, the same on every rank. Rank ``r`` keeps the momentum target ``W̄_t`` and
every student's parameters and optimiser moments of its units only; the EMA
``W̄ ← m W̄ + (1 − m) W`` is elementwise and each student's imitation loss is a sum
over targets, so each rank's update is exactly the single-process update restricted
to its targets, and imitation memory and time per rank fall as ``1/N``.

For checkpoints and export the parts are gathered (:func:`gather_parts`) and joined
(:meth:`moil.recipes.Imitation.join`); a checkpoint holds the whole state, so a run
resumed on the same world size takes back its own part.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from moil.distributed.world import World

__all__ = ["collective_update", "full_state", "gather_parts", "local_state", "owned_targets", "units"]


def units(adapters: Iterable[Any]) -> list[tuple[str, ...]]:
    """Targets that stay together: connected components of every adapter's sharing groups,
    each in target order, ordered by first target."""
    order: dict[str, int] = {}
    parent: dict[str, str] = {}

    def root(t: str) -> str:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for adapter in adapters:
        for t in adapter.targets:
            order.setdefault(t, len(order))
            parent.setdefault(t, t)
        for members in adapter.groups().values():
            for t in members[1:]:
                a, b = root(members[0]), root(t)
                if a != b:
                    parent[max(a, b, key=order.get)] = min(a, b, key=order.get)
    out: dict[str, list[str]] = {}
    for t in sorted(order, key=order.get):
        out.setdefault(root(t), []).append(t)
    return [tuple(ts) for ts in out.values()]


def owned_targets(adapters: Sequence[Any], base: Mapping[str, Tensor], world: World) -> frozenset[str]:
    """The targets rank ``world.rank`` imitates (balanced by ``Σ numel`` of weight and bias).

    Raises:
      ValueError: fewer units than ranks (a rank would hold nothing).
    """
    groups = units(adapters)
    if len(groups) < world.size:
        raise ValueError(
            f"the imitation has {len(groups)} unit(s) of targets that can be split (sharing groups "
            f"stay whole), fewer than the {world.size} processes; launch at most {len(groups)} "
            "processes with torchrun --nproc_per_node, or adapt more layers."
        )

    def size(unit: tuple[str, ...]) -> int:
        return sum(base[f"{t}.{p}"].numel() for t in unit for p in ("weight", "bias") if f"{t}.{p}" in base)

    load = [0] * world.size
    mine: list[str] = []
    for unit in sorted(groups, key=lambda u: -size(u)):  # stable: ties keep model order
        rank = min(range(world.size), key=lambda r: (load[r], r))
        load[rank] += size(unit)
        if rank == world.rank:
            mine.extend(unit)
    return frozenset(mine)


def _to(tree: Any, device: Callable[[Tensor], torch.device] | torch.device) -> Any:
    if isinstance(tree, Tensor):
        return tree.to(device(tree) if callable(device) else device)
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_to(v, device) for v in tree))
    if isinstance(tree, Mapping):
        return {k: _to(v, device) for k, v in tree.items()}
    return tree


def gather_parts(part: Any, world: World, dst: int | None = None) -> list[Any] | None:
    """Every rank's ``part`` (a state tree), in rank order; on ``dst`` only (others get
    ``None``), or on every rank when ``dst`` is ``None``. Tensors travel through the
    CPU and arrive on this rank's device of the same tensors."""
    cpu = _to(part, torch.device("cpu"))
    if dst is None:
        parts: list[Any] = [None] * world.size
        dist.all_gather_object(parts, cpu)
    else:
        parts = [None] * world.size if world.rank == dst else None
        dist.gather_object(cpu, parts, dst=dst)
        if parts is None:
            return None
    here = _first_device(part)
    return [_to(p, here) for p in parts]


def _first_device(tree: Any) -> torch.device:
    if isinstance(tree, Tensor):
        return tree.device
    children = tree.values() if isinstance(tree, Mapping) else tree if isinstance(tree, tuple) else ()
    for child in children:
        found = _first_device(child)
        if found is not None:
            return found
    return None  # type: ignore[return-value]


def collective_update(update: Callable[[], tuple[Any, dict[str, float]]], world: World) -> tuple[Any, dict[str, float]]:
    """Run this rank's imitation ``update()``; combine every rank's metrics; fail together.

    Metrics: ``distance/*`` combine as ``√Σ_r d_r²`` (a Frobenius norm over targets),
    ``momentum/*`` are the same on every rank, the rest (losses summed over targets)
    add up. A ``FloatingPointError`` on any rank is raised on every rank, so no rank
    is left waiting in a collective.
    """
    result, metrics, error = None, {}, None
    try:
        result, metrics = update()
    except FloatingPointError as err:
        error = str(err)
    everyone: list[Any] = [None] * world.size
    dist.all_gather_object(everyone, (metrics, error))
    errors = [e for _, e in everyone if e is not None]
    if errors:
        raise FloatingPointError(errors[0])
    combined: dict[str, float] = {}
    for key in dict.fromkeys(k for m, _ in everyone for k in m):  # rank 0's order first
        values = [m[key] for m, _ in everyone if key in m]
        if key.startswith("distance/"):
            combined[key] = math.sqrt(sum(v * v for v in values))
        elif key.startswith("momentum/"):
            combined[key] = values[0]
        else:
            combined[key] = sum(values)
    return result, combined


def full_state(recipe: Any, state: Any, backbone: Any, world: World, dst: int | None = None) -> Any:
    """The whole state of a run split over ``world`` (``None`` on ranks other than ``dst``).

    A recipe whose state is split offers ``gather_state(state, backbone, dst=…)``; any
    other recipe's state is the same on every rank and is returned as it is.
    """
    if world.size == 1 or not hasattr(recipe, "gather_state"):
        return state if dst is None or world.rank == dst else None
    return recipe.gather_state(state, backbone, dst=dst)


def local_state(recipe: Any, state: Any, backbone: Any) -> Any:
    """This rank's part of a whole state (e.g. one read from a checkpoint)."""
    return recipe.local_state(state, backbone) if hasattr(recipe, "local_state") else state
