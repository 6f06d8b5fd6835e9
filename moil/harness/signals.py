"""SIGTERM behaves like Ctrl-C: the running step ends, a checkpoint is written, a clean exit.

``kill``, ``timeout`` and job schedulers stop a process with SIGTERM, whose default
action discards everything since the last checkpoint. Inside :func:`terminate_as_interrupt`
SIGTERM raises :class:`Terminated`, a :class:`KeyboardInterrupt`: every path that
checkpoints on Ctrl-C (``moil.train.train``'s except-path, the grid's stop event)
does so on SIGTERM too; the CLI then exits with :data:`EXIT_TERMINATED` (128 + 15)
instead of Ctrl-C's 130.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["EXIT_INTERRUPTED", "EXIT_TERMINATED", "Terminated", "exit_code", "terminate_as_interrupt"]

EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""


def _raise(signum, frame) -> None:
    raise Terminated(f"received signal {signum} (SIGTERM)")


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread; the
    previous handler is restored after. Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def exit_code(err: KeyboardInterrupt) -> int:
    """143 for SIGTERM, 130 for Ctrl-C."""
    return EXIT_TERMINATED if isinstance(err, Terminated) else EXIT_INTERRUPTED
