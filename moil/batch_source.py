"""Where the training loop's batches come from: ``step -> batch``, a re-iterable, or an iterator.

:func:`batch_source` turns any of them into ``step -> batch`` starting at a given step, so
:func:`moil.train.train` resumes without caring which it was given.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping

from torch import Tensor

__all__ = ["Batches", "batch_source", "epochs"]

Batches = Callable[[int], Mapping[str, Tensor]] | Iterable[Mapping[str, Tensor]]


def epochs(batches: Iterable[Mapping[str, Tensor]]) -> Iterator[Mapping[str, Tensor]]:
    """Pass after pass over a re-iterable, epoch ``e`` announced by ``set_epoch(e)``."""
    epoch = 0
    while True:
        for owner in (batches, getattr(batches, "sampler", None), getattr(batches, "batch_sampler", None)):
            if callable(getattr(owner, "set_epoch", None)):
                owner.set_epoch(epoch)
        made = 0
        for batch in batches:
            made += 1
            yield batch
        if not made:
            raise ValueError(f"train: pass {epoch} over the batches yielded nothing; give a non-empty iterable.")
        epoch += 1


def batch_source(batches: Batches, start: int) -> Callable[[int], Mapping[str, Tensor]]:
    """``step -> batch`` from ``start`` on: a function as it is; a re-iterable passed over
    epoch after epoch (:func:`epochs`), or an iterator, with their first ``start`` batches skipped.

    Raises:
      TypeError: ``batches`` is one batch (a dict), a tensor or not iterable.
      ValueError: (when called) the iterator ran out before ``step``.
    """
    if callable(batches):
        return batches
    if isinstance(batches, (Mapping, Tensor, str, bytes)) or not (
            isinstance(batches, Iterable) or hasattr(batches, "__getitem__")):  # a map-style dataset iterates
        what = "one batch (a dict)" if isinstance(batches, Mapping) else f"a {type(batches).__name__}"
        raise TypeError(
            f"train: batches is {what}; pass a list of batch dicts ([batch] for one), a DataLoader, "
            "an iterator, or a function step -> batch."
        )
    # An iterator is used up by one pass; anything else (DataLoader, list) is passed over again.
    source = iter(batches) if isinstance(batches, Iterator) else epochs(batches)
    iterator = itertools.islice(source, start, None)

    def take(step: int) -> Mapping[str, Tensor]:
        try:
            return next(iterator)
        except StopIteration:
            raise ValueError(
                f"train: the batch iterable ran out at step {step}; pass more batches, fewer "
                "steps, or a function step -> batch."
            ) from None

    return take
