r"""The teacher's gradients averaged over ranks: what DDP does, on a dict of tensors.

Each rank ``r`` of ``N`` computes ``g_r = ∇ L_r`` on its slice of ``B/N`` examples of
the global batch, with ``L_r`` the mean loss over its slice. For a loss that is a mean
over examples, ``L = (1/B) Σ_i ℓ_i = (1/N) Σ_r L_r``, so

    ``ḡ = (1/N) Σ_r g_r = ∇ L``

— the single-process gradient of the global batch (up to float summation order).
After the average every rank holds the same ``ḡ`` and takes the same optimiser step,
so the replicated teacher stays identical on every rank.

Why not ``torch.nn.parallel.DistributedDataParallel``: moil's teacher is a dict of
plain tensors driven by ``torch.func.functional_call``, not an ``nn.Module``'s
parameters, so DDP's module wrapper (its autograd hooks on ``module.parameters()``)
has nothing to hook. Its gradient synchronisation is exactly an all-reduce average,
done here once per step on one flat buffer per (device, dtype) — DDP's bucketing with
one bucket, after the backward. FSDP2 ``fully_shard`` swaps module parameters for
``DTensor`` shards for the same module-hook reason and is not supported
(:func:`moil.distributed.world.check_plain_tensors` refuses it).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import Tensor

from moil.distributed.world import World

__all__ = ["all_reduce_mean", "check_mean_loss"]


def all_reduce_mean(
    loss: Tensor, grads: Mapping[str, Mapping[str, Tensor]], world: World
) -> tuple[Tensor, dict[str, dict[str, Tensor]]]:
    """``(mean_r loss_r, {group: {name: mean_r g_r}})`` over the world's ranks.

    Args:
      loss: this rank's 0-dim loss.
      grads: ``{group: {name: (…shape)}}``; the same keys and shapes on every rank.

    Returns:
      New tensors (the inputs are untouched), identical on every rank. One
      ``all_reduce(SUM)`` per (device, dtype) bucket, then ``/ N`` (``gloo`` has no AVG).
    """
    flat = [("", "loss", loss.detach().reshape(()))] + [
        (g, k, v) for g, tree in grads.items() for k, v in tree.items()
    ]
    if world.size == 1:
        return loss.detach(), {g: dict(tree) for g, tree in grads.items()}
    buckets: dict[tuple, list[int]] = {}
    for i, (_, _, v) in enumerate(flat):
        buckets.setdefault((v.device, v.dtype), []).append(i)
    out: list[Tensor | None] = [None] * len(flat)
    for indices in buckets.values():
        with torch.no_grad():
            buffer = torch.cat([flat[i][2].reshape(-1) for i in indices])
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(world.size)
        for i, piece in zip(indices, buffer.split([flat[i][2].numel() for i in indices])):
            out[i] = piece.view_as(flat[i][2])
    averaged: dict[str, dict[str, Tensor]] = {g: {} for g in grads}
    for (g, k, _), v in zip(flat[1:], out[1:]):
        averaged[g][k] = v
    return out[0], averaged


def check_mean_loss(task_loss: object, world: World) -> None:
    """Refuse, on more than one process, a task loss that is not a mean over examples.

    ``ContrastiveRetrieval`` scores every example against the batch's other examples:
    on a slice of ``B/N`` examples each rank would see ``B/N − 1`` negatives, not
    ``B − 1``, and the mean of the ranks' losses is another loss. (Gathering the
    embeddings across ranks would fix it; it is not implemented.)
    """
    from moil.objectives import ContrastiveRetrieval

    if world.size > 1 and isinstance(task_loss, ContrastiveRetrieval):
        raise NotImplementedError(
            f"task_loss={task_loss!r} uses the batch's other examples as negatives, so it does not "
            f"split over {world.size} processes (each would see only B/{world.size} of them); "
            "train contrastive retrieval on one process, or use a per-example loss (ITM, VQA)."
        )
