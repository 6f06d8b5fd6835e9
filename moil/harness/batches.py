"""The batches a run reads: an endless shuffled training stream and fixed evaluation batches.

Both come from a :class:`~moil.harness.data.DemoData` split as ``dict[str, Tensor]``
on the run's device; every arm sees the same evaluation batches.
"""

from __future__ import annotations

from typing import Iterator

import torch

from moil.harness.data import DemoData

__all__ = ["EVAL_SEED", "eval_batches", "train_stream"]

EVAL_SEED = 2024  # one fixed draw of negatives / question phrasings for every arm


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def train_stream(
    data: DemoData, task: str, batch_size: int, seed: int, device: torch.device = torch.device("cpu")
) -> Iterator[dict]:
    """Training batches epoch after epoch, epoch ``e`` shuffled by ``(seed, e)``."""
    split, epoch = data.train, 0
    while True:
        make = split.itm_batches if task == "itm" else split.vqa_batches
        for batch in make(batch_size=batch_size, generator=seed * 10_007 + epoch, drop_last=True):
            yield _to(batch, device)
        epoch += 1


def eval_batches(
    data: DemoData, split: str, task: str, batch_size: int, device: torch.device = torch.device("cpu")
) -> list[dict]:
    """The fixed evaluation batches of a split (same negatives / phrasings for every arm)."""
    part = data[split]
    make = part.itm_batches if task == "itm" else part.vqa_batches
    return [_to(b, device) for b in make(batch_size=batch_size, generator=EVAL_SEED, shuffle=False)]
