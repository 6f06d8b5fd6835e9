"""Running a grid's jobs: finished ones reused on resume, the rest in this process or in
worker processes, and the jobs a finished one unlocks (a sweep's seed runs) queued as soon
as it ends, so no worker waits for a phase to end."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from moil.harness.jobs import Job, Runner
from moil.harness.run_folder import read_json
from moil.harness.workers import Reporter, in_processes

__all__ = ["run_jobs"]


def _with_folder(result: dict, run_dir: Path) -> dict:
    # Where its metrics.jsonl lives, relative to the grid folder (for the plots).
    return {**result, "folder": str(Path(*run_dir.parts[-4:]))}


def _finished(job: Job, resume: bool) -> dict | None:
    """The run's results when ``resume`` finds it done as ``job`` asks (same steps, learning
    rate and seed, every split scored); else ``None`` — it is (re)trained, from its checkpoint
    if it has one (a run folder made with another config is refused with its fix)."""
    done = job.folder / "results.json"
    if not (resume and done.exists()):
        return None
    result = read_json(done, required=("steps", "candidates"),
                       fix="delete it (with --resume the run is then trained again)")
    scored = all(split in c for c in result["candidates"].values() for split in job.splits)
    same = result["steps"] == job.steps and result.get("lr") == job.lr and result.get("seed") == job.seed
    return _with_folder(result, job.folder) if same and scored else None


def run_jobs(jobs: list[Job], runner: Runner, reporter: Reporter, resume: bool,
             follow: Callable[[Job, dict], list[Job]] = lambda job, result: [], most: int | None = None,
             unlocks: Callable[[Job], bool] = lambda job: False) -> dict[Path, dict]:
    """``{folder: results}`` of ``jobs`` and of every job ``follow(job, result)`` unlocks as a
    job finishes: finished ones (on ``resume``) read back, the rest trained here or, with
    ``train.workers > 1``, in that many processes at once (``most``: the most jobs there can be).
    Jobs that ``unlocks`` (their end may unlock others) start first, then the longest."""
    results: dict[Path, dict] = {}
    seen: set[Path] = set()

    def admit(new: list[Job]) -> list[Job]:  # the ones to train; finished ones unlock theirs now
        todo = []
        for job in new:
            if job.folder in seen:
                raise ValueError(f"two runs would share a folder ({job.folder}): give learning rates that "
                                 "differ at 6 significant digits")
            seen.add(job.folder)
            done = _finished(job, resume)
            if done is None:
                todo.append(job)
            else:
                results[job.folder] = done
                todo += admit(follow(job, done))
        return todo

    def finished(job: Job, result: dict) -> list[Job]:
        results[job.folder] = _with_folder(result, job.folder)
        return admit(follow(job, results[job.folder]))

    queued = admit(jobs)
    if runner.config.train.workers == 1:
        while queued:
            job = queued.pop(0)
            queued += finished(job, runner(job, resume, reporter(job.label, job.steps)))
        return results
    if not queued:
        return results

    def order(job: Job) -> tuple[bool, int]:  # longest first: no worker is left with one long run at the end
        return not unlocks(job), -_RELATIVE_COST.get(runner.arms[job.arm].recipe, 2)

    in_processes(sorted(queued, key=order), runner.config, reporter, resume, follow=finished, most=most, order=order)
    return results


#: Rough run cost by recipe (MoIL trains a teacher and imitates; heads skip weight grads).
_RELATIVE_COST = {"moil": 3, "head": 1}


