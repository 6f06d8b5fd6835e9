"""moil.harness.grid.run_grid: sweeps and the seed runs each unlocks, in this process or in worker processes."""

from __future__ import annotations

import json

import pytest
import torch

from moil.harness.config import parse_config
from moil.harness.grid import run_grid
from moil.harness.metrics_log import MetricsLog

pytestmark = pytest.mark.slow


def small(**train) -> dict:
    return {
        "data": {"limit": 40},
        "model": {"family": "tiny"},
        "train": {"steps": 3, "seeds": [0, 1], "tasks": ["itm"], "threads": 1, **train},
        "arms": [
            {"name": "head", "recipe": "head", "lr": [1e-3, 3e-3]},
            {"name": "moil", "recipe": "moil", "lr": 1e-3, "momentum": "half-life:2",
             "students": [{"name": "s", "approx": "hybrid", "rank": 2, "refit": "als", "final_fit": True}]},
        ],
    }


def scores(results: dict) -> list:
    return [(r["task"], r["arm"], r["seed"], r["lr"], r["candidates"]) for r in results["runs"]]


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    return run_grid(parse_config(small()), tmp_path_factory.mktemp("seq"))


def test_workers_reproduce_the_sequential_grid(sequential, tmp_path):
    """Law: with the threads fixed, runs spread over worker processes give exactly the
    numbers of the same grid run one after another, in the same order."""
    parallel = run_grid(parse_config(small(workers=2)), tmp_path)
    assert scores(parallel) == scores(sequential)
    assert parallel["sweeps"] == sequential["sweeps"]
    assert parallel["machine"]["workers"] == 2 and parallel["machine"]["threads"] == 1
    assert "2 worker processes × 1 thread each" in (tmp_path / "report.md").read_text()


def test_sweep_run_of_the_first_seed_is_reused(sequential):
    """The arm with an lr sweep runs each lr once on seed 0 (scored on val); the chosen
    one is that seed's run, and only seed 1 is trained again."""
    (sweep,) = sequential["sweeps"]
    assert [s["lr"] for s in sweep["scores"]] == [1e-3, 3e-3]
    head = [r for r in sequential["runs"] if r["arm"] == "head"]
    assert head[0]["folder"].startswith("sweep/") and head[1]["folder"].startswith("runs/")
    assert {r["lr"] for r in head} == {sweep["chosen"]}


def test_eval_splits_limits_seed_runs_not_sweeps(tmp_path):
    """eval_splits = ["test"]: seed runs skip val (their report cells read "—"), but sweep
    runs are still chosen on val."""
    results = run_grid(parse_config(small(eval_splits=["test"])), tmp_path)
    for run in results["runs"]:
        for candidate in run["candidates"].values():
            assert "test" in candidate
            assert ("val" in candidate) == run["folder"].startswith("sweep/")
    assert all(len(s["scores"]) == 2 for s in results["sweeps"])
    lines = (tmp_path / "report.md").read_text().splitlines()
    header = [c.strip() for c in next(line for line in lines if line.startswith("| task |")).strip("|").split("|")]
    for line in lines:
        if line.startswith("| itm (") and "| moil |" in line:
            assert dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))["val"] == "—"


def test_a_failing_run_in_a_worker_stops_the_grid_and_loses_nothing(tmp_path):
    """A run whose loss turns non-finite raises its own FloatingPointError in the caller;
    the run beside it stops after its current step with a checkpoint (or, still queued,
    never starts), and `resume` (without the failing arm) finishes it: every step once."""
    config = small(workers=2, seeds=[0], steps=400)
    config["arms"] = [{"name": "ok", "recipe": "head", "lr": 1e-3},
                      {"name": "diverges", "recipe": "full", "lr": 1e12}]
    with pytest.raises(FloatingPointError, match="task loss is"):
        run_grid(parse_config(config), tmp_path)
    ok = tmp_path / "runs" / "itm" / "ok" / "seed0"
    if (ok / "metrics.jsonl").exists():  # it had started (else it was stopped while queued)
        assert (ok / "checkpoint.safetensors").exists() and not (ok / "results.json").exists()
        assert 0 < len((ok / "metrics.jsonl").read_text().splitlines()) < 400
    config["arms"] = config["arms"][:1]
    results = run_grid(parse_config(config), tmp_path, resume=True)
    steps = [json.loads(line)["step"] for line in (ok / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 401))
    assert results["runs"][0]["arm"] == "ok"


def test_per_task_lr_table_sweeps_only_where_it_lists_several(tmp_path):
    """lr = {itm = a, vqa = [b, c]}: ITM trains at a with no sweep, VQA sweeps b and c."""
    config = small(tasks=["itm", "vqa"], seeds=[0])
    config["arms"] = [{"name": "head", "recipe": "head", "lr": {"itm": 1e-3, "vqa": [1e-3, 3e-3]}}]
    results = run_grid(parse_config(config), tmp_path)
    assert [(s["task"], [x["lr"] for x in s["scores"]]) for s in results["sweeps"]] == [("vqa", [1e-3, 3e-3])]
    itm, vqa = results["runs"]
    assert (itm["task"], itm["lr"]) == ("itm", 1e-3) and itm["folder"].startswith("runs/")
    assert vqa["task"] == "vqa" and vqa["lr"] == results["sweeps"][0]["chosen"]


def test_metrics_log_replays_steps_after_the_checkpoint_once(tmp_path):
    """Resumed at step 4 (checkpoint at 3) after a kill that had logged 1..5 and half of 6:
    the log ends with each step exactly once, in order."""
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path, resume=False) as log:
        for step in range(1, 6):
            log.write(step, {"task_loss": float(step)})
    with path.open("a") as f:
        f.write('{"step": 6, "task_lo')  # cut short by the kill
    with MetricsLog(path, resume=True) as log:
        for step in range(4, 8):
            log.write(step, {"task_loss": -float(step)})
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 8))
    assert [r["task_loss"] for r in rows] == [1.0, 2.0, 3.0, -4.0, -5.0, -6.0, -7.0]


def test_resume_retrains_a_finished_run_that_does_not_match(tmp_path):
    """A finished run is reused on resume only if it has the steps and splits asked for:
    after eval_splits grows from [test] to [val, test], the runs are scored again."""
    config = small(seeds=[0], eval_splits=["test"])
    config["arms"] = [{"name": "head", "recipe": "head", "lr": 1e-3}]
    run_grid(parse_config(config), tmp_path)
    config["train"]["eval_splits"] = ["val", "test"]
    (run,) = run_grid(parse_config(config), tmp_path, resume=True)["runs"]
    assert all("val" in c for c in run["candidates"].values())
    steps = [json.loads(line)["step"] for line in (tmp_path / run["folder"] / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_a_grid_leaves_the_callers_thread_count_alone(tmp_path):
    """Runs in this process use train.threads; the caller's torch thread count is back
    after the grid (a library call must not change the caller's global torch state)."""
    before = torch.get_num_threads()
    threads = 2 if before == 1 else 1
    config = small(seeds=[0], steps=1, threads=threads)
    config["arms"] = [{"name": "head", "recipe": "head", "lr": 1e-3}]
    seen = []
    run_grid(parse_config(config), tmp_path,
             reporter=lambda label, total: lambda step, metrics: seen.append(torch.get_num_threads()))
    assert seen == [threads]
    assert torch.get_num_threads() == before


def test_an_arm_with_its_own_seeds_runs_only_those(tmp_path):
    """Law: an arm with ``seeds`` runs (and sweeps on) exactly those seeds, the others
    ``train.seeds``; its summary row counts its own seeds."""
    raw = small()
    raw["arms"][0]["seeds"] = [1]
    results = run_grid(parse_config(raw), tmp_path)
    got = sorted((r["arm"], r["seed"]) for r in results["runs"])
    assert got == [("head", 1), ("moil", 0), ("moil", 1)]
    assert {s["arm"] for s in results["sweeps"]} == {"head"}
    assert all(json.loads((tmp_path / "sweep" / "itm" / "head" / f"lr{lr:g}" / "run.json").read_text())["seed"] == 1
               for lr in (1e-3, 3e-3))
    rows = {(r["arm"], r["candidate"]): r for r in results["summary"]}
    assert rows["head", "heads"]["seeds"] == 1 and list(rows["head", "heads"]["test_by_seed"]) == ["1"]
    assert rows["moil", "teacher"]["seeds"] == 2


def test_an_empty_arm_seed_list_is_refused():
    from moil.harness.config import ConfigError

    raw = small()
    raw["arms"][0]["seeds"] = []
    with pytest.raises(ConfigError, match=r"seeds must be non-empty.*seeds=\[\] @ \$\.arms\[0\]\.seeds"):
        parse_config(raw)


def test_resume_never_reuses_a_finished_run_of_another_learning_rate(tmp_path):
    """A seed run's folder does not name its lr: when the chosen rate changes, resume must not
    read back the old run as the new one (it refuses the folder, naming the fix)."""
    config = small(seeds=[0])
    config["arms"] = [{"name": "head", "recipe": "head", "lr": 1e-3}]
    run_grid(parse_config(config), tmp_path)
    config["arms"][0]["lr"] = 3e-3
    with pytest.raises(ValueError, match=r"runs/itm/head/seed0.*\n  lr: 0.001 -> 0.003\n.*--overwrite"):
        run_grid(parse_config(config), tmp_path, resume=True)
