"""Torch's intra-op thread count, which is process-global: set for a block, restored after.

Results that are cached and shared across runs (the visual features, the pre-alignment) are
computed at a fixed count, :data:`CACHED_THREADS`: on this CPU a forward's last bits depend
on the count for some shapes (EfficientNet's last, partial batch of 12 images differs by up to
3e-5 between 1 and 2 threads), and 400 pre-alignment steps amplify that into a different start
for every arm (validation ITM 0.956 vs 0.961). With the count fixed, the cache is a function of
its inputs on one kind of CPU, whatever the caller's count; another kind (AVX2 against AVX-512
kernels) still gives other last bits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["CACHED_THREADS", "intra_op_threads"]

#: Intra-op threads of every computation whose result is cached by content.
CACHED_THREADS = 1


@contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """Torch's intra-op threads = ``threads`` inside the block (0: left as it is), and
    the caller's count again after it, however the block ends."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
