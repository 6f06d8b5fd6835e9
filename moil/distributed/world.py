"""Which process of how many: the world ``torchrun`` launched, and the per-rank slice of a batch.

``torchrun --nproc_per_node N …`` starts ``N`` copies of a program with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment; :func:`from_env` reads them
(one process without them). :func:`init_world` joins the default process group —
``gloo`` on CPU, ``nccl`` on CUDA (each rank on GPU ``LOCAL_RANK``). While
:func:`active` holds a world, the training step reads it with :func:`current`: the
task gradients are averaged over it and the imitation is split by target (see
:mod:`moil.distributed.sharding`). Outside it (the default) everything is one process.

The config's batch is the *global* batch: every rank draws the same global batch of
``B`` examples (a pure function of ``(seed, epoch)``) and keeps its contiguous slice
``[r·B/N, (r+1)·B/N)``, so one config gives the same run on 1 or N processes.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import attrs
import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "SINGLE",
    "World",
    "active",
    "agree",
    "barrier",
    "broadcast",
    "check_batch_size",
    "check_plain_tensors",
    "current",
    "from_env",
    "init_world",
    "on_main",
    "shard_batch",
]


def _index(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"World: {attribute.name} must be an integer >= 0, got {attribute.name}={value!r}.")


@attrs.frozen
class World:
    """Process ``rank`` of ``size`` (``0 <= rank < size``); ``World()`` is one process."""

    rank: int = attrs.field(default=0, validator=_index)
    size: int = attrs.field(default=1, validator=_index)

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.rank < self.size:
            raise ValueError(f"World: need 0 <= rank < size, got rank={self.rank}, size={self.size}.")

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files."""
        return self.rank == 0


SINGLE = World()
T = TypeVar("T")
_CURRENT: contextvars.ContextVar[World] = contextvars.ContextVar("moil_world", default=SINGLE)


def from_env(environ: Mapping[str, str] | None = None) -> World:
    """The world ``torchrun`` describes in ``RANK``/``WORLD_SIZE`` (one process without them)."""
    env = os.environ if environ is None else environ
    try:
        size, rank = int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0"))
    except ValueError:
        raise ValueError(
            f"WORLD_SIZE={env.get('WORLD_SIZE')!r} / RANK={env.get('RANK')!r} are not integers; "
            "launch with torchrun, which sets them."
        ) from None
    return World(rank, size)


def init_world(device: str | torch.device | None = None, *, batch_size: int | None = None) -> World:
    """Join the default process group of a ``torchrun`` launch; return this process's world.

    One process (no ``WORLD_SIZE`` > 1): nothing is initialised, :data:`SINGLE` is returned.
    ``device``: the training device's type — ``"cuda"`` picks ``nccl`` and GPU
    ``LOCAL_RANK`` (``torch.cuda.set_device``), anything else ``gloo``. Idempotent.
    ``batch_size``: a global batch size to check (:func:`check_batch_size`) before joining.
    """
    world = from_env()
    if batch_size is not None:
        check_batch_size(batch_size, world)
    if world.size == 1:
        return SINGLE
    if dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    cuda = torch.device(device).type == "cuda" if device is not None else False
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return World(dist.get_rank(), dist.get_world_size())


def current() -> World:
    """The world the running training step belongs to (:data:`SINGLE` outside :func:`active`)."""
    return _CURRENT.get()


@contextlib.contextmanager
def active(world: World) -> Iterator[World]:
    """Make ``world`` :func:`current` inside the block (``moil.train.train`` holds it for a run)."""
    if world.size > 1 and not dist.is_initialized():
        raise RuntimeError(
            f"moil.distributed.active: world size {world.size} needs the default process group; "
            "call moil.distributed.init_world() first (under torchrun)."
        )
    token = _CURRENT.set(world)
    try:
        yield world
    finally:
        _CURRENT.reset(token)


def barrier(world: World) -> None:
    """Wait for every rank (no-op on one process)."""
    if world.size > 1:
        dist.barrier()


def agree(flag: bool, world: World) -> bool:
    """``flag`` on any rank (one ``all_reduce(MAX)``), so every rank takes the same branch."""
    if world.size == 1:
        return bool(flag)
    t = torch.tensor([int(bool(flag))], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def on_main(fn: Callable[[], object], world: World) -> None:
    """Run ``fn`` on rank 0 only (e.g. write a file); every rank waits for it and raises
    if it failed (``RuntimeError`` naming rank 0's error on the others)."""
    error: BaseException | None = None
    if world.main:
        try:
            fn()
        except BaseException as err:  # noqa: BLE001 - re-raised below, on every rank
            error = err
    if world.size > 1:
        message = [None if error is None else f"{type(error).__name__}: {error}"]
        dist.broadcast_object_list(message, src=0)
        if error is None and message[0] is not None:
            raise RuntimeError(f"rank 0 failed: {message[0]}")
    if error is not None:
        raise error


def broadcast(value: T, world: World) -> T:
    """Rank 0's ``value`` on every rank (a picklable object; itself on one process)."""
    if world.size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def check_batch_size(batch_size: int, world: World, field: str = "data.batch_size") -> None:
    """Raise unless the global batch splits into ``world.size`` equal slices."""
    if batch_size % world.size:
        raise ValueError(
            f"{field}={batch_size} does not split over {world.size} processes: the batch size is the "
            f"global batch, divided equally among ranks; use a multiple of {world.size} "
            f"(e.g. {field}={max(world.size, batch_size // world.size * world.size)}), or a "
            "torchrun --nproc_per_node that divides it."
        )


def shard_batch(batch: Mapping[str, Tensor], world: World) -> dict[str, Tensor]:
    """This rank's contiguous slice of a global batch: rows ``[r·B/N, (r+1)·B/N)`` of every tensor.

    Args:
      batch: ``{key: (B, …)}``; 0-dim tensors and non-tensors are passed through whole.

    Raises:
      ValueError: tensors disagree on ``B``, or ``B`` is not a multiple of ``world.size``.
    """
    if world.size == 1:
        return dict(batch)
    sizes = {k: v.shape[0] for k, v in batch.items() if isinstance(v, Tensor) and v.ndim > 0}
    if len(set(sizes.values())) > 1:
        raise ValueError(
            f"shard_batch: the batch's tensors have different leading sizes {sizes}; under torchrun "
            "every tensor of a batch must lead with the global batch dimension B."
        )
    if not sizes:
        return dict(batch)
    total = next(iter(sizes.values()))
    check_batch_size(total, world, "the batch size")
    n = total // world.size
    lo = world.rank * n
    return {k: v[lo : lo + n] if k in sizes else v for k, v in batch.items()}


def check_plain_tensors(tensors: Mapping[str, Tensor], owner: str) -> None:
    """Refuse FSDP2-sharded parameters (``DTensor``): moil drives plain tensors.

    moil's teacher is a dict of plain tensors under ``torch.func.functional_call``, not an
    ``nn.Module``'s parameters, so ``fully_shard`` (which swaps a module's parameters for
    ``DTensor`` shards and all-gathers them in module hooks) has nothing to wrap.
    """
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without DTensor
        return
    sharded = [k for k, v in tensors.items() if isinstance(v, DTensor)]
    if sharded:
        raise NotImplementedError(
            f"{owner}: parameters {sharded[:3]} are FSDP/DTensor shards; moil's training loop "
            "replicates the teacher on every rank (data parallel, gradients all-reduced) and does "
            "not support FSDP2 fully_shard. Build the backbone from an unsharded model."
        )
