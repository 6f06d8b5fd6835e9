"""A grid of runs (tasks × arms × seeds, with per-arm learning-rate sweeps) and its summary.

``run_grid(config, out)`` writes ``out/config.toml`` (resolved), one folder per run
under ``out/runs/<task>/<arm>/seed<k>/`` (and ``out/sweep/…`` for sweeps),
``out/results.json`` and, via :mod:`moil.report`, ``out/report.md`` and PNG plots.
Finished runs are reused on ``resume``; an interrupted one continues from its
checkpoint. ``train.workers`` runs that many at once, each in its own process.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import signal
import statistics
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from queue import Empty
from typing import Any, Callable

import attrs
import torch

from moil.config import Config, config_dict, dump_config
from moil.data import DemoData
from moil.experiment import PRIMARY_METRIC, build_backbone, load_data, run_one

__all__ = ["Job", "run_grid", "summarize", "Reporter"]

#: ``start(label, total_steps) -> on_step(step, metrics)``; the CLI draws progress bars.
Reporter = Callable[[str, int], Callable[[int, dict], None]]


def _quiet(label: str, total: int) -> Callable[[int, dict], None]:
    return lambda step, metrics: None


def machine(config: Config | None = None) -> dict[str, Any]:
    workers = config.train.workers if config is not None else 1
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": _threads(config) if workers > 1 else torch.get_num_threads(),
        "workers": workers,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def _threads(config: Config) -> int:
    """Intra-op threads of each worker process: as configured, else cores ÷ workers."""
    return config.train.threads or max(1, (os.cpu_count() or 1) // config.train.workers)


@attrs.frozen
class Job:
    """One run of the grid: an arm × task × seed at one learning rate."""

    task: str
    arm: str
    seed: int
    lr: float
    folder: Path
    steps: int
    splits: tuple[str, ...]
    label: str


class _Context:
    """The data (loaded once) and one backbone per task, built on first use."""

    def __init__(self, config: Config, data: DemoData | None = None) -> None:
        self.config, self.data, self.backbones = config, data, {}
        self.arms = {a.name: a for a in config.arms}

    def run(self, job: Job, resume: bool, on_step: Callable[[int, dict], None]) -> dict:
        if self.data is None:
            self.data = load_data(self.config)
        if job.task not in self.backbones:
            self.backbones[job.task] = build_backbone(self.config, job.task, self.data)
        result = run_one(
            self.config, self.arms[job.arm], job.task, job.seed, job.lr, self.backbones[job.task], self.data,
            job.folder, steps=job.steps, splits=job.splits, resume=resume, on_step=on_step,
        )
        return _with_folder(result, job.folder)


def _with_folder(result: dict, run_dir: Path) -> dict:
    # Where its metrics.jsonl lives, relative to the grid folder (for the plots).
    return {**result, "folder": str(Path(*run_dir.parts[-4:]))}


def _finished(job: Job, resume: bool) -> dict | None:
    done = job.folder / "results.json"
    return _with_folder(json.loads(done.read_text()), job.folder) if resume and done.exists() else None


def _run_jobs(jobs: list[Job], context: _Context, reporter: Reporter, resume: bool) -> list[dict]:
    """Results of ``jobs`` in order: finished ones (on ``resume``) read back, the rest
    trained here or, with ``train.workers > 1``, in that many processes at once."""
    results = [_finished(job, resume) for job in jobs]
    todo = [i for i, r in enumerate(results) if r is None]
    if not todo:
        return results
    if context.config.train.workers == 1:
        for i in todo:
            results[i] = context.run(jobs[i], resume, reporter(jobs[i].label, jobs[i].steps))
        return results
    # Longest runs first, so no worker is left with one long run at the end.
    todo.sort(key=lambda i: -_RELATIVE_COST.get(context.arms[jobs[i].arm].recipe, 2))
    for i, result in zip(todo, _in_processes([jobs[i] for i in todo], context, reporter, resume)):
        results[i] = result
    return results


#: Rough run cost by recipe (MoIL trains a teacher and imitates; heads skip weight grads).
_RELATIVE_COST = {"moil": 3, "head": 1}


# -- worker processes ------------------------------------------------------------
_worker: dict[str, Any] = {}


def _start_worker(config: Config, queue: Any, stop: Any) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per worker is noise
    # Ctrl-C is the parent's to handle: it sets `stop`, which each run checks after
    # every step — a signal landing inside the pool's own machinery could hang it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(_threads(config))
    _worker.update(context=_Context(config), queue=queue, stop=stop)


def _work(index: int, job: Job, resume: bool) -> dict:
    queue, stop = _worker["queue"], _worker["stop"]
    if stop.is_set():
        raise KeyboardInterrupt  # queued before the grid stopped: never starts
    queue.put((index, 0, None))

    def on_step(step: int, metrics: dict) -> None:
        queue.put((index, step, float(metrics.get("task_loss", float("nan")))))
        if stop.is_set():
            raise KeyboardInterrupt  # train() checkpoints this step, then re-raises

    return _worker["context"].run(job, resume, on_step)


def _in_processes(jobs: list[Job], context: _Context, reporter: Reporter, resume: bool) -> list[dict]:
    # spawn, not fork: a forked child would inherit torch's thread pools mid-state.
    mp = multiprocessing.get_context("spawn")
    queue, stop = mp.Queue(), mp.Event()
    bars: dict[int, Callable[[int, dict], None]] = {}

    def drain() -> None:
        while True:
            try:
                index, step, loss = queue.get_nowait()
            except Empty:
                return
            if index not in bars:
                bars[index] = reporter(jobs[index].label, jobs[index].steps)
            if loss is not None:
                bars[index](step, {"task_loss": loss})

    workers = min(context.config.train.workers, len(jobs))
    pool = ProcessPoolExecutor(workers, mp_context=mp, initializer=_start_worker,
                               initargs=(context.config, queue, stop))
    try:
        futures = [pool.submit(_work, i, job, resume) for i, job in enumerate(jobs)]
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            drain()
            for future in done:
                future.result()  # a failed run stops the grid now, with its own error
        drain()
        return [f.result() for f in futures]
    except BaseException:
        # Ctrl-C or a failed run: running runs stop after their current step (and
        # checkpoint it), queued ones never start; `--resume` continues them all.
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_grid(config: Config, out: str | Path, *, reporter: Reporter = _quiet, resume: bool = False) -> dict:
    """Run every task × arm × seed of ``config``; return (and write) the results.

    First every learning-rate sweep run (all arms and tasks at once), then every
    seed run at the chosen rates; with ``train.workers > 1`` each phase spreads its
    runs over that many processes. Results are in config order either way.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(dump_config(config))
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    started = time.perf_counter()
    # Loaded here even with workers: a first run computes and caches the image
    # features once, before the workers read them.
    context = _Context(config, load_data(config))
    full = config.train.steps

    sweep_jobs = []
    for task in config.train.tasks:
        for arm in config.arms:
            if len(arm.learning_rates(task)) == 1:
                continue
            steps = config.train.sweep_steps or full
            # A full-length sweep run of the first seed *is* that seed's run at the
            # chosen lr: it is also scored on test (never used for the choice) and reused.
            extra = tuple(s for s in config.train.eval_splits if s != "val") if steps == full else ()
            for lr in arm.learning_rates(task):
                sweep_jobs.append(Job(
                    task, arm.name, config.train.seeds[0], lr, out / "sweep" / task / arm.name / f"lr{lr:g}",
                    steps, ("val", *extra), f"{task} · {arm.name} · sweep lr={lr:g}",
                ))
    sweep_results = _run_jobs(sweep_jobs, context, reporter, resume)

    sweeps, chosen, reuse = [], {}, {}
    for task in config.train.tasks:
        for arm in config.arms:
            tried = [(j, r) for j, r in zip(sweep_jobs, sweep_results) if (j.task, j.arm) == (task, arm.name)]
            if not tried:
                chosen[task, arm.name] = arm.learning_rates(task)[0]
                continue
            scores = [{"lr": j.lr, "val": r["candidates"][r["primary"]]["val"][PRIMARY_METRIC[task]]} for j, r in tried]
            lr = max(scores, key=lambda s: s["val"])["lr"]
            sweeps.append({"task": task, "arm": arm.name, "scores": scores, "chosen": lr})
            chosen[task, arm.name] = lr
            job, result = next((j, r) for j, r in tried if j.lr == lr)
            if job.steps == full:
                reuse[task, arm.name, job.seed] = result

    seed_jobs, runs = [], []
    for task in config.train.tasks:
        for arm in config.arms:
            lr = chosen[task, arm.name]
            for seed in config.train.seeds:
                if (task, arm.name, seed) not in reuse:
                    seed_jobs.append(Job(
                        task, arm.name, seed, lr, out / "runs" / task / arm.name / f"seed{seed}", full,
                        tuple(config.train.eval_splits), f"{task} · {arm.name} · seed {seed} · lr={lr:g}",
                    ))
    seed_results = iter(_run_jobs(seed_jobs, context, reporter, resume))
    for task in config.train.tasks:
        for arm in config.arms:
            for seed in config.train.seeds:
                runs.append(reuse.get((task, arm.name, seed)) or next(seed_results))

    results = {
        "config": config_dict(config),
        "machine": machine(config),
        "wall_seconds": time.perf_counter() - started,
        "sweeps": sweeps,
        "runs": runs,
        "summary": summarize(runs),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    from moil.report import write_report

    write_report(results, out)
    return results


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (task, arm, candidate): mean ± sample std over seeds of the test
    (and val) primary metric, stored size, time and memory."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        for candidate in run["candidates"]:
            groups.setdefault((run["task"], run["arm"], candidate), []).append(run)
    rows = []
    for (task, arm, candidate), members in groups.items():
        metric = members[0]["metric"]

        def values(split: str) -> list[float]:
            return [m["candidates"][candidate][split][metric] for m in members if split in m["candidates"][candidate]]

        test, val = values("test"), values("val")
        stored = members[0]["candidates"][candidate]["stored_parameters"]
        rows.append({
            "task": task, "arm": arm, "candidate": candidate, "metric": metric,
            "primary": candidate == members[0]["primary"],
            "test_mean": statistics.fmean(test) if test else None,
            "test_std": statistics.stdev(test) if len(test) > 1 else 0.0,
            "val_mean": statistics.fmean(val) if val else None,
            "seeds": len(members), "lr": members[0]["lr"],
            "stored_parameters": stored,
            "percent_of_model": 100.0 * stored / members[0]["model_parameters"],
            "train_seconds": statistics.fmean(m["train_seconds"] for m in members),
            "peak_memory_mib": statistics.fmean(m["peak_memory_mib"] for m in members),
        })
    return rows
