"""How much memory a run took: the peak during a ``with`` block."""

from __future__ import annotations

import threading

import psutil
import torch

__all__ = ["PeakMemory"]


class PeakMemory:
    """Peak resident memory of this process during a ``with`` block, minus its start (MiB).

    A sampling thread (every 20 ms) — CPU allocations by torch are invisible to
    tracemalloc; on CUDA, ``torch.cuda.max_memory_allocated`` is used instead.
    """

    def __enter__(self) -> "PeakMemory":
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self._proc, self._stop = psutil.Process(), threading.Event()
        self.start = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def mib(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        return (self.peak - self.start) / 2**20
