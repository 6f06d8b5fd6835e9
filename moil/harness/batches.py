"""The batches a run reads: an endless shuffled training stream and fixed evaluation batches.

Both come from a :class:`~moil.harness.data.DemoData` split as ``dict[str, Tensor]``
on the run's device; every arm sees the same evaluation batches. Any other data (a
:class:`~moil.harness.data.diskdata.DiskData`) gives them itself: ``data.train_stream(task,
batch_size, seed, device)`` (an iterator or ``step -> batch``) and ``data.eval_batches(split,
task, batch_size, device)``.
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
    """Training batches epoch after epoch, epoch ``e`` shuffled by ``(seed, e)``.

    Full batches only (``drop_last``): an ITM batch of ``batch_size`` rows takes
    ``batch_size / 2`` images, a VQA batch ``batch_size``.

    Raises:
      ValueError: at once (not at the first ``next``) when the training split holds fewer
        images than one batch takes: the stream would yield nothing, forever.
    """
    if not isinstance(data, DemoData):  # data from disk: ``step -> batch`` (moil.harness.data.diskdata)
        return data.train_stream(task, batch_size, seed, device)
    if task not in ("itm", "vqa"):
        raise ValueError(f"train_stream: task must be 'itm' or 'vqa', got task={task!r}.")
    images = int(data.train.images.labels.shape[0])
    need = batch_size // 2 if task == "itm" else batch_size
    if images < max(need, 1):
        raise ValueError(
            f"train_stream: the training split has {images} images but one {task.upper()} batch of "
            f"data.batch_size = {batch_size} takes {need}: no batch could be made. Raise data.limit "
            f"to >= {need} (0 keeps every image) or lower data.batch_size to <= "
            f"{images * 2 if task == 'itm' else images}."
        )
    return _epochs(data, task, batch_size, seed, device)


def _epochs(data: DemoData, task: str, batch_size: int, seed: int, device: torch.device) -> Iterator[dict]:
    split, epoch = data.train, 0
    make = split.itm_batches if task == "itm" else split.vqa_batches
    while True:
        made = 0
        for batch in make(batch_size=batch_size, generator=seed * 10_007 + epoch, drop_last=True):
            made += 1
            yield _to(batch, device)
        if not made:  # never spin: an epoch that yields nothing would repeat forever
            raise RuntimeError(
                f"train_stream: epoch {epoch} of the training split yielded no {task} batch "
                f"(data.batch_size = {batch_size}); lower data.batch_size or raise data.limit."
            )
        epoch += 1


def eval_batches(
    data: DemoData, split: str, task: str, batch_size: int, device: torch.device = torch.device("cpu")
) -> list[dict]:
    """The fixed evaluation batches of a split (same negatives / phrasings for every arm)."""
    if not isinstance(data, DemoData):
        return data.eval_batches(split, task, batch_size, device)
    part = data[split]
    make = part.itm_batches if task == "itm" else part.vqa_batches
    return [_to(b, device) for b in make(batch_size=batch_size, generator=EVAL_SEED, shuffle=False)]
