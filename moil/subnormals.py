"""Subnormal floats flushed to zero for a block of CPU arithmetic, the caller's mode restored.

The imitation step multiplies tiny numbers. Early in a run the target has barely moved
from ``W0``, and the mean imitation loss weighs each entry by ``1/(out·in)``. The AdamW
second moments ``v ← β₂v + (1−β₂)g²`` of such gradients fall below fp32's smallest normal
(≈1.2e-38), and x86 CPUs compute on subnormal numbers tens of times slower: on a
random-init ViLT-B/32 a Hybrid(96) student's update took 2.5× as long unflushed
(``benchmarks/imitation_update.py``). Flushing changes nothing that
matters: a subnormal ``v`` adds at most ≈1e-19 to ``√v + ε`` with ``ε = 1e-8``.

``torch.set_flush_denormal`` sets the calling thread's mode and has no getter, so the
current mode is read by a probe: a product that is subnormal unless flushed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["flush_subnormals", "flushing"]


def flushing() -> bool:
    """Whether this thread's CPU arithmetic flushes subnormal results to zero now."""
    return bool(torch.mul(torch.tensor(1e-30), torch.tensor(1e-10)) == 0)


@contextmanager
def flush_subnormals() -> Iterator[None]:
    """Flush subnormals (CPU, calling thread) inside the block; restore the mode after.

    A no-op where the CPU has no flush mode (``torch.set_flush_denormal`` returns ``False``)."""
    before = flushing()
    if before:
        yield
        return
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(False)
