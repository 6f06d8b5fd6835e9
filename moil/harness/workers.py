"""Grid runs in worker processes: ``in_processes(jobs, config, reporter, resume)``.

Each worker (spawned, not forked: a forked child would inherit torch's thread
pools mid-state) builds its own :class:`~moil.harness.jobs.Runner` and takes jobs
from the pool; progress goes back to the parent's bars through a queue. Ctrl-C
and failed runs are the parent's to handle: it sets a stop event that every run
checks after each step (then checkpoints and stops), and queued runs never start.

Workers die with their parent: on Linux the kernel sends them SIGTERM when it dies
(``prctl(PR_SET_PDEATHSIG)``), elsewhere a watchdog thread polls the parent's pid; a
worker's SIGTERM stops its run after the current step (with a checkpoint), as the stop
event does. A run folder's lock (:func:`moil.harness.run_folder.hold`) makes a later
``--resume`` refuse a folder some worker still writes.

Torch's intra-op thread count is process-global: a worker sets its own; in the
caller's process :func:`moil.harness.threads.intra_op_threads` sets it for a block and
restores it.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from queue import Empty
from typing import Any, Callable

import torch

from moil.harness.config import Config
from moil.harness.jobs import Job, Runner

__all__ = ["Reporter", "in_processes", "worker_threads"]

#: ``start(label, total_steps) -> on_step(step, metrics)``; the CLI draws progress bars.
Reporter = Callable[[str, int], Callable[[int, dict], None]]


def worker_threads(config: Config) -> int:
    """Intra-op threads of each worker: as configured, else cores ÷ workers."""
    return config.train.threads or max(1, (os.cpu_count() or 1) // config.train.workers)


_worker: dict[str, Any] = {}
class _Flag:
    """A flag a signal handler may set. Not a ``threading.Event``: its lock is not
    reentrant, so a SIGTERM landing while the main thread is inside ``Event.set``
    deadlocks the handler (seen: an orphaned worker stuck for good)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = False

    def set(self) -> None:
        self.value = True

    def is_set(self) -> bool:
        return self.value


_terminated = _Flag()  # this worker got SIGTERM, or its parent is gone
_busy = threading.Event()  # a run is in progress (it exits at its next step)
#: Seconds an orphaned worker waits for its run to checkpoint before it exits anyway.
ORPHAN_GRACE_S = 60.0


def die_with_parent(parent: int, poll_s: float = 0.5) -> None:
    """Make this process leave when ``parent`` dies: Linux's ``PR_SET_PDEATHSIG``
    (SIGTERM) and, everywhere, a daemon thread polling ``os.getppid()``."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl
            pass
    if os.getppid() != parent:  # died before the prctl took effect
        os._exit(143)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        _terminated.set()
        deadline = time.monotonic() + ORPHAN_GRACE_S
        while _busy.is_set() and time.monotonic() < deadline:
            time.sleep(poll_s)  # the run checkpoints at its next step and exits
        os._exit(143)

    threading.Thread(target=watch, name="moil-parent-watch", daemon=True).start()


def _start(config: Config, queue: Any, stop: Any, parent: int) -> None:
    from transformers.utils import logging as hf_logging

    # A signal landing inside the pool's own machinery can hang it: Ctrl-C and SIGTERM
    # reach runs through `stop` / `_terminated`, checked after each step.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: _terminated.set())
    die_with_parent(parent)
    hf_logging.disable_progress_bar()  # one "Loading weights" bar per worker is noise
    torch.set_num_threads(worker_threads(config))
    _worker.update(runner=Runner(config), queue=queue, stop=stop, parent=parent)


def _work(index: int, job: Job, resume: bool) -> dict:
    queue, stop = _worker["queue"], _worker["stop"]
    if stop.is_set() or _terminated.is_set():
        raise KeyboardInterrupt  # queued before the grid stopped: never starts
    queue.put((index, 0, None))

    def on_step(step: int, metrics: dict) -> None:
        queue.put((index, step, float(metrics.get("task_loss", float("nan")))))
        if stop.is_set() or _terminated.is_set():
            raise KeyboardInterrupt  # train() checkpoints this step, then re-raises

    _busy.set()
    try:
        return _worker["runner"](job, resume, on_step)
    finally:
        _busy.clear()
        if _terminated.is_set() and os.getppid() != _worker["parent"]:
            os._exit(143)  # orphaned: the run has checkpointed; nobody waits for a result


def in_processes(jobs: list[Job], config: Config, reporter: Reporter, resume: bool,
                 follow: Callable[[Job, dict], list[Job]] | None = None, most: int | None = None,
                 order: Callable[[Job], Any] | None = None) -> list[dict]:
    """Results of ``jobs`` and of the jobs they unlock, in the order they were given, run
    ``config.train.workers`` at a time.

    ``follow(job, result)`` is called here as each job finishes; the jobs it returns (a
    sweep's seed runs, once its learning rate is chosen) join the queue of waiting jobs,
    which is kept sorted by ``order`` (stable; none: first come, first run). A job is handed
    to the pool only when a worker is free, so the queue's order is the order runs start,
    and after a stop no waiting job starts. ``most``: how many jobs there can be in all
    (the pool's size is at most this; default ``len(jobs)``).
    """
    jobs = list(jobs)  # grows as follow unlocks jobs
    mp = multiprocessing.get_context("spawn")
    queue, stop = mp.Queue(), mp.Event()
    bars: dict[int, Callable[[int, dict], None]] = {}

    def drain() -> None:
        while True:
            try:
                index, step, loss = queue.get_nowait()
            except (Empty, OSError, EOFError):
                return
            if index not in bars:
                bars[index] = reporter(jobs[index].label, jobs[index].steps)
            if loss is not None:
                bars[index](step, {"task_loss": loss})

    size = min(config.train.workers, max(most or 0, len(jobs)))
    pool = ProcessPoolExecutor(size, mp_context=mp, initializer=_start, initargs=(config, queue, stop, os.getpid()))
    try:
        results: dict[int, dict] = {}
        waiting, running = list(range(len(jobs))), {}
        while waiting or running:
            while waiting and len(running) < size:
                i = waiting.pop(0)
                running[pool.submit(_work, i, jobs[i], resume)] = i
            done, _ = wait(running, timeout=0.1, return_when=FIRST_COMPLETED)
            drain()
            for future in done:
                i = running.pop(future)
                results[i] = future.result()  # a failed run stops the grid now, with its own error
                for job in follow(jobs[i], results[i]) if follow else ():
                    jobs.append(job)
                    waiting.append(len(jobs) - 1)
            if order is not None:
                waiting.sort(key=lambda k: order(jobs[k]))
        return [results[i] for i in range(len(jobs))]
    except BrokenProcessPool as err:
        raise RuntimeError(
            "a worker process died without a Python error (killed for memory, or a crash); runs "
            "beside it were stopped. Continue with --resume (runs restart from their last "
            "checkpoint: set train.checkpoint_every for long runs), with fewer train.workers if "
            "memory is short."
        ) from err
    except BaseException:
        # Ctrl-C or a failed run: running runs stop after their current step (and
        # checkpoint it), queued ones never start; `--resume` continues them all.
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        drain()  # the last steps' messages (sent by the workers' feeder threads)
