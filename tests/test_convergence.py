"""Validation curves (train.eval_every): logged, read back, tabled and judged flat or not."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moil.harness.config import parse_config
from moil.harness.convergence import ArmCurve, run_metrics, validation_curves
from moil.harness.grid import run_grid


def small() -> dict:
    return {
        "data": {"limit": 40},
        "model": {"family": "tiny"},
        "train": {"steps": 4, "seeds": [0, 1], "tasks": ["itm"], "threads": 1, "eval_every": 2},
        "arms": [
            {"name": "lora", "recipe": "lora", "approx": "lowrank", "rank": 2, "lr": 1e-2},
            {"name": "moil", "recipe": "moil", "lr": 1e-2, "momentum": "half-life:2",
             "students": [{"name": "s", "approx": "hybrid", "rank": 2, "refit": "als", "final_fit": True}]},
        ],
    }


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("curves")
    return run_grid(parse_config(small()), out), out


@pytest.mark.slow
def test_each_run_logs_its_trained_models_val_score_every_k_steps(grid):
    """Steps 2 and 4 carry ``val/<candidate>/accuracy``: the MoIL run's teacher, the LoRA run's
    stored student; the point at the last step equals the run's own val score."""
    results, out = grid
    for run in results["runs"]:
        candidate = "teacher" if run["arm"] == "moil" else run["primary"]
        key = f"val/{candidate}/accuracy"
        rows = run_metrics(out, run)
        assert [r["step"] for r in rows if key in r] == [2, 4]
        assert all("task_loss" in r for r in rows)
        last = next(r[key] for r in rows if r["step"] == 4 and key in r)
        assert last == run["candidates"][candidate]["val"]["accuracy"]
        assert run["curve"]["every"] == 2 and run["curve"]["val_rows"] > 0 and run["curve"]["seconds"] > 0


@pytest.mark.slow
def test_the_reports_convergence_table_is_the_logged_curves(grid):
    """Every number of the report's convergence rows is the mean over seeds of the logged points."""
    results, out = grid
    report = (out / "report.md").read_text()
    assert "## Convergence: validation curves" in report and (out / "val-itm.png").exists()
    curves = validation_curves(results, out)
    assert {c.arm for c in curves} == {"lora", "moil"}
    for c in curves:
        assert c.steps == (2, 4) and set(c.seeds) == {0, 1}
        for i, step in enumerate(c.steps):
            logged = []
            for run in results["runs"]:
                if run["arm"] == c.arm:
                    rows = [json.loads(x) for x in (out / run["folder"] / "metrics.jsonl").read_text().splitlines()]
                    logged.append(next(r[f"val/{c.candidate}/accuracy"] for r in rows if r["step"] == step
                                       and f"val/{c.candidate}/accuracy" in r))
            assert c.mean[i] == pytest.approx(sum(logged) / len(logged), abs=0)
        section = report.split("## Convergence: validation curves", 1)[1]
        row = next(line for line in section.splitlines() if line.startswith(f"| itm (accuracy) | {c.arm} |"))
        assert ", ".join(f"{s}: {v:.4f}" for s, v in zip(c.steps, c.mean)) in row
        assert f"{c.rise:+.4f}" in row and f"{c.standard_error:.4f}" in row


values = st.floats(0.0, 1.0, allow_nan=False)


@given(st.lists(values, min_size=3, max_size=12), st.integers(1, 5000))
def test_rise_is_the_last_point_over_the_best_of_the_first_two_thirds(points, rows):
    """Law: rise = v̄(T) − max_{t ≤ 2T/3} v̄(t); flat ⇔ rise ≤ √(v̄(T)(1 − v̄(T))/n)."""
    steps = tuple(10 * (i + 1) for i in range(len(points)))
    curve = ArmCurve("itm", "a", "teacher", "accuracy", steps, {0: tuple(points)}, rows)
    early = [v for s, v in zip(steps, points) if s <= 2 * steps[-1] / 3]
    assert curve.rise == points[-1] - max(early)
    se = math.sqrt(points[-1] * (1 - points[-1]) / rows)
    assert curve.standard_error == pytest.approx(se)
    assert curve.converged == (curve.rise <= curve.standard_error)


@given(st.lists(values, min_size=3, max_size=8), st.floats(0.02, 0.5))
def test_a_curve_still_climbing_by_more_than_its_noise_is_not_flat(points, climb):
    """Law: lifting only the last point by more than the largest possible standard error
    (1/(2√n) at p = ½) above every earlier point makes the arm not converged."""
    rows = 10_000  # se ≤ 0.005 < climb
    top = max(points[:-1])
    last = min(1.0, top + climb)
    if last - top <= 1 / (2 * math.sqrt(rows)):
        return
    steps = tuple(range(1, len(points) + 1))
    curve = ArmCurve("itm", "a", "teacher", "accuracy", steps, {0: (*points[:-1], last), 1: (*points[:-1], last)}, rows)
    assert curve.converged is False
