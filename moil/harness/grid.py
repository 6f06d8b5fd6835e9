"""A grid of runs (tasks × arms × seeds, with per-arm learning-rate sweeps) and its summary.

``run_grid(config, out)`` writes ``out/config.toml`` (resolved), one folder per run
under ``out/runs/<task>/<arm>/seed<k>/`` (and ``out/sweep/…`` for sweeps),
``out/results.json`` and, via :mod:`moil.harness.report`, ``out/report.md`` and PNG plots.
Finished runs are reused on ``resume``; an interrupted one continues from its
checkpoint (each run folder's manifest must match: :mod:`moil.harness.run_folder`).
A folder that already holds a grid is refused unless ``resume`` or ``overwrite``;
one made by ``moil train`` is always refused. The grid folder is locked for its
writer; ``out/grid.json`` is its manifest. ``train.workers`` runs that many at
once, each in its own process.
"""

from __future__ import annotations

import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

import moil
from moil.harness.build import build_backbone, build_recipe, load_data
from moil.harness.config import Config, config_dict, dump_config
from moil.harness.jobs import Job, Runner
from moil.harness.run_folder import (
    MANIFEST,
    RunFolderError,
    check_apart,
    hold,
    inputs_of,
    refuse_both,
    write_json,
    write_text,
)
from moil.harness.scoring import PRIMARY_METRIC
from moil.harness.schedule import run_jobs
from moil.harness.threads import intra_op_threads
from moil.harness.workers import Reporter, worker_threads

__all__ = ["run_grid", "summarize", "Reporter"]


def _quiet(label: str, total: int) -> Callable[[int, dict], None]:
    return lambda step, metrics: None


def machine(config: Config | None = None) -> dict[str, Any]:
    workers = config.train.workers if config is not None else 1
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": worker_threads(config) if workers > 1 else torch.get_num_threads(),
        "workers": workers,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


GRID_MANIFEST = "grid.json"


def check_grid_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse, by reading only, a grid into ``out`` that would replace what it holds.

    Raises:
      RunFolderError: ``out`` is a file or a ``moil train`` folder, or holds a grid and
        neither ``resume`` nor ``overwrite`` is given.
    """
    refuse_both(resume, overwrite)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"output folder {out} exists and is not a folder; give another --out path.")
    if (out / MANIFEST).exists():
        raise RunFolderError(f"{out} is a `moil train` run folder; give the grid another --out folder.")
    held = [n for n in (GRID_MANIFEST, "results.json", "runs", "sweep") if (out / n).exists()]
    if held and not (resume or overwrite):
        raise RunFolderError(f"{out} already holds a grid ({', '.join(held)}); continue it with --resume, "
                             "pass --overwrite to discard it and start again, or choose another --out folder.")


def run_grid(config: Config, out: str | Path, *, reporter: Reporter = _quiet, resume: bool = False,
             overwrite: bool = False) -> dict:
    """Run every task × arm × seed of ``config``; return (and write) the results.

    The learning-rate sweep runs and the seed runs of arms without a sweep are queued at
    once (sweeps first); an arm's seed runs join the queue as soon as its sweep has chosen
    its rate. With
    ``train.workers > 1`` the runs spread over that many processes. Results are in config order either way. Runs in
    this process use ``train.threads`` intra-op threads; the caller's count is
    restored afterwards.
    """
    out = Path(out)
    check_apart(out, inputs_of(config), "--out")
    check_grid_folder(out, resume, overwrite)
    started = time.perf_counter()
    with intra_op_threads(config.train.threads):
        runner = _checked_runner(config)
    with hold(out):
        if overwrite:
            for name in ("runs", "sweep"):
                shutil.rmtree(out / name, ignore_errors=True)
            (out / "results.json").unlink(missing_ok=True)
            resume = False
        write_json(out / GRID_MANIFEST, {"kind": "grid", "moil_version": moil.__version__,
                                          "config": config_dict(config)})
        write_text(out / "config.toml", dump_config(config))
        return _run_grid(config, out, reporter, resume, runner, started)


def _checked_runner(config: Config) -> Runner:
    """Data, every task's backbone and every arm's recipe, built before the grid folder is
    written: a value only the model can check (a rank above a target's width) is refused
    with the folder untouched. Loaded here even with workers: a first run computes and
    caches the image features once, before the workers read them."""
    runner = Runner(config, load_data(config))
    for task in config.train.tasks:
        runner.backbones[task] = build_backbone(config, task, runner.data)
        for arm in config.arms:
            for lr in arm.learning_rates(task):
                build_recipe(arm, task, lr, config.train.steps)
    return runner


def _run_grid(config: Config, out: Path, reporter: Reporter, resume: bool, runner: Runner, started: float) -> dict:
    with intra_op_threads(config.train.threads):
        # An arm's seed runs join the queue as soon as its own sweep has chosen its rate;
        # arms without a sweep queue theirs with the sweeps.
        sweep_jobs = _sweep_jobs(config, out)
        swept = {(j.task, j.arm) for j in sweep_jobs}
        fixed = {(task, arm.name): arm.learning_rates(task)[0] for task in config.train.tasks
                 for arm in config.arms if (task, arm.name) not in swept}
        tried: dict[tuple[str, str], dict[Path, dict]] = {}

        def follow(job: Job, result: dict) -> list[Job]:
            key = (job.task, job.arm)
            if job not in sweep_jobs:
                return []
            tried.setdefault(key, {})[job.folder] = result
            mine = [j for j in sweep_jobs if (j.task, j.arm) == key]  # config order: a tie goes as at the end
            if len(tried[key]) < len(mine):
                return []
            _, chosen, reuse = _choose(config, mine, [tried[key][j.folder] for j in mine])
            return _seed_jobs(config, out, {key: chosen[key]}, reuse)

        seed_count = sum(len(config.seeds_of(arm)) for _ in config.train.tasks for arm in config.arms)
        done = run_jobs(sweep_jobs + _seed_jobs(config, out, fixed, {}), runner, reporter, resume, follow,
                        most=len(sweep_jobs) + seed_count, unlocks=lambda job: job in sweep_jobs)
        sweeps, _, reuse = _choose(config, sweep_jobs, [done[j.folder] for j in sweep_jobs])
        runs = [reuse.get((task, arm.name, seed)) or done[_seed_folder(out, task, arm.name, seed)]
                for task in config.train.tasks for arm in config.arms for seed in config.seeds_of(arm)]
        results = {
            "config": config_dict(config),
            "machine": machine(config),
            "wall_seconds": time.perf_counter() - started,
            "sweeps": sweeps,
            "runs": runs,
            "summary": summarize(runs),
        }
    write_json(out / "results.json", results)
    from moil.harness.report import write_report

    write_report(results, out)
    return results


def _sweep_jobs(config: Config, out: Path) -> list[Job]:
    """One job per learning rate of every arm that lists several, on the arm's first seed."""
    full, jobs = config.train.steps, []
    for task in config.train.tasks:
        for arm in config.arms:
            if len(arm.learning_rates(task)) == 1:
                continue
            steps = config.train.sweep_steps or full
            # A full-length sweep run of the first seed *is* that seed's run at the
            # chosen lr: it is also scored on test (never used for the choice) and reused.
            extra = tuple(s for s in config.train.eval_splits if s != "val") if steps == full else ()
            for lr in arm.learning_rates(task):
                jobs.append(Job(
                    task, arm.name, config.seeds_of(arm)[0], lr, out / "sweep" / task / arm.name / f"lr{lr:g}",
                    steps, ("val", *extra), f"{task} · {arm.name} · sweep lr={lr:g}",
                ))
    return jobs


def _choose(config: Config, jobs: list[Job], results: list[dict]) -> tuple[list[dict], dict, dict]:
    """``(sweeps, chosen, reuse)``: each sweep's val scores and choice, the lr of every
    (task, arm) that ``jobs`` sweep, and the full-length sweep runs that serve as their seed's run."""
    sweeps, chosen, reuse = [], {}, {}
    for task in config.train.tasks:
        for arm in config.arms:
            tried = [(j, r) for j, r in zip(jobs, results) if (j.task, j.arm) == (task, arm.name)]
            if not tried:
                continue
            scores = [{"lr": j.lr, "val": r["candidates"][r["primary"]]["val"][PRIMARY_METRIC[task]]} for j, r in tried]
            lr = max(scores, key=lambda s: s["val"])["lr"]
            sweeps.append({"task": task, "arm": arm.name, "scores": scores, "chosen": lr})
            chosen[task, arm.name] = lr
            job, result = next((j, r) for j, r in tried if j.lr == lr)
            if job.steps == config.train.steps:
                reuse[task, arm.name, job.seed] = result
    return sweeps, chosen, reuse


def _seed_folder(out: Path, task: str, arm: str, seed: int) -> Path:
    return out / "runs" / task / arm / f"seed{seed}"


def _seed_jobs(config: Config, out: Path, chosen: dict, reuse: dict) -> list[Job]:
    """One job per task × arm × seed of the (task, arm)s in ``chosen``, at the chosen lr,
    except the sweep runs reused."""
    return [
        Job(task, arm.name, seed, chosen[task, arm.name], _seed_folder(out, task, arm.name, seed),
            config.train.steps, tuple(config.train.eval_splits),
            f"{task} · {arm.name} · seed {seed} · lr={chosen[task, arm.name]:g}")
        for task in config.train.tasks for arm in config.arms if (task, arm.name) in chosen
        for seed in config.seeds_of(arm) if (task, arm.name, seed) not in reuse
    ]


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
            "test_by_seed": {str(m["seed"]): m["candidates"][candidate]["test"][metric]
                             for m in members if "test" in m["candidates"][candidate]},
            "val_mean": statistics.fmean(val) if val else None,
            "seeds": len(test) if test else len(members), "lr": members[0]["lr"],
            "stored_parameters": stored,
            "percent_of_model": 100.0 * stored / members[0]["model_parameters"],
            "train_seconds": statistics.fmean(m["train_seconds"] for m in members),
            "peak_memory_mib": statistics.fmean(m["peak_memory_mib"] for m in members),
        })
    return rows
