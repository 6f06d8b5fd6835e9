"""moil.harness.schedule.run_jobs: jobs a finished job unlocks run too, finished ones are read
back on resume (and unlock theirs at once), and no two runs share a folder."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from moil.harness.jobs import Job
from moil.harness.schedule import run_jobs


class Recorder:
    """A one-process runner that records the jobs it trains, in order."""

    def __init__(self):
        self.config, self.ran = SimpleNamespace(train=SimpleNamespace(workers=1)), []

    def __call__(self, job, resume, on_step):
        self.ran.append(job.label)
        return {"steps": job.steps, "lr": job.lr, "seed": job.seed, "candidates": {"c": {"test": {}}}}


def job(tmp: Path, label: str, lr: float = 1e-3, seed: int = 0) -> Job:
    return Job("itm", "a", seed, lr, tmp / "runs" / "itm" / "a" / label, 2, ("test",), label)


def quiet(label, total):
    return lambda step, metrics: None


def test_a_job_unlocked_by_two_others_runs_after_both_and_once(tmp_path):
    """Law: a job that follow() returns once both sweeps ended runs after them, exactly once;
    every job's results are returned under its folder, with the folder relative to the grid."""
    sweeps = [job(tmp_path, "lr1"), job(tmp_path, "lr2", lr=2e-3)]
    ended = []

    def follow(done, result):
        ended.append(done.label)
        return [job(tmp_path, "seed1", seed=1)] if len(ended) == 2 else []

    runner = Recorder()
    results = run_jobs(sweeps, runner, quiet, False, follow)
    assert runner.ran == ["lr1", "lr2", "seed1"]
    assert set(results) == {tmp_path / "runs" / "itm" / "a" / n for n in ("lr1", "lr2", "seed1")}
    assert results[tmp_path / "runs" / "itm" / "a" / "seed1"]["folder"] == "runs/itm/a/seed1"


def test_on_resume_a_finished_job_is_read_back_and_unlocks_its_jobs_at_once(tmp_path):
    """A finished run (same steps, lr, seed; every split scored) is not trained again; the jobs
    it unlocks are, before any other."""
    done, fresh = job(tmp_path, "lr1"), job(tmp_path, "lr2", lr=2e-3)
    done.folder.mkdir(parents=True)
    (done.folder / "results.json").write_text(json.dumps(
        {"steps": 2, "lr": 1e-3, "seed": 0, "candidates": {"c": {"test": {"accuracy": 0.5}}}}))
    runner = Recorder()
    follow = lambda j, r: [job(tmp_path, "seed1", seed=1)] if j.label == "lr1" else []  # noqa: E731
    results = run_jobs([done, fresh], runner, quiet, True, follow)
    assert runner.ran == ["seed1", "lr2"]
    assert results[done.folder]["candidates"]["c"]["test"]["accuracy"] == 0.5


def test_an_unlocked_job_in_a_taken_folder_is_refused(tmp_path):
    """Two runs never share a folder, whether both were given or one was unlocked later."""
    with pytest.raises(ValueError, match="two runs would share a folder"):
        run_jobs([job(tmp_path, "x"), job(tmp_path, "x", lr=2e-3)], Recorder(), quiet, False)
    with pytest.raises(ValueError, match="two runs would share a folder.*lr1"):
        run_jobs([job(tmp_path, "lr1")], Recorder(), quiet, False, lambda j, r: [job(tmp_path, "lr1", seed=1)])


def test_a_tied_sweep_chooses_the_first_rate_in_config_order_however_the_runs_finish(tmp_path):
    """Law: with equal val scores the seed runs use the rate the results' sweeps report, the
    first in config order, even when the later rate's run finished (or was read back) first."""
    from moil.harness.config import parse_config
    from moil.harness.grid import run_grid
    from moil.harness.jobs import Runner

    def tied(self, job, resume, on_step=None):  # every run scores 0.5 on val: a tie
        job.folder.mkdir(parents=True, exist_ok=True)
        result = {"task": job.task, "arm": job.arm, "recipe": "head", "steps": job.steps, "lr": job.lr,
                "seed": job.seed, "primary": "heads", "metric": "accuracy",
                "candidates": {"heads": {s: {"accuracy": 0.5} for s in job.splits} | {"stored_parameters": 1}},
                "train_seconds": 0.0, "peak_memory_mib": 0.0, "model_parameters": 10}
        (job.folder / "results.json").write_text(json.dumps(result))
        return result

    config = parse_config({
        "data": {"limit": 40}, "model": {"family": "tiny"},
        "train": {"steps": 2, "seeds": [0, 1], "tasks": ["itm"], "threads": 1},
        "arms": [{"name": "head", "recipe": "head", "lr": [1e-3, 3e-3]}],
    })
    monkey = pytest.MonkeyPatch()
    monkey.setattr(Runner, "__call__", tied)
    monkey.setattr("moil.harness.report.write_report", lambda results, out: None)
    try:
        run_grid(config, tmp_path)
        (tmp_path / "sweep" / "itm" / "head" / "lr0.001" / "results.json").unlink()  # 3e-3 is read back first
        results = run_grid(config, tmp_path, resume=True)
    finally:
        monkey.undo()
    (sweep,) = results["sweeps"]
    assert sweep["chosen"] == 1e-3
    assert [(r["seed"], r["lr"]) for r in results["runs"]] == [(0, 1e-3), (1, 1e-3)]
