"""Validation curves of a grid's runs, and whether each arm has stopped improving.

A run with ``train.eval_every = k`` logs its trained model's primary metric on ``val``
every ``k`` steps (``val/<candidate>/<metric>`` in ``metrics.jsonl``:
:class:`~moil.harness.scoring.ValidationCurve`; sweep runs too, since the chosen one is
its seed's run). The point at the run's last step ``T`` is the run's own ``val`` score from
``results.json``: for the curve's models (a teacher, a LoRA/PEFT student, the heads) the
end-of-run fits change nothing, so it equals what the loop would have logged. For each
task × arm this module gathers the seeds' curves and reads the *rise over the last third*:

    ``rise = v̄(T) − max_{t ≤ 2T/3} v̄(t)``

with ``v̄`` the mean over seeds. The arm counts as *flat* when ``rise ≤ se``, where
``se = √(v̄(T)(1 − v̄(T))/n)`` on ``n`` val rows is the binomial standard error of an
accuracy (for a soft score in [0, 1], such as ``vqa_score``, an upper bound). This is a
heuristic threshold, not a test: points of one run share the same val rows, so ``se``
measures how well the val set pins the level, not the noise of a rise; and the maximum
over the early points makes the verdict lean towards *flat*. An arm with a seed that has
no curve (a run reused on ``--resume`` from before ``eval_every`` was set, or shorter than
``k``) gets no verdict.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import fmean
from typing import Any

import attrs

from moil.harness.metrics_log import read_rows
from moil.harness.scoring import curve_candidate, curve_key

__all__ = ["ArmCurve", "run_curve", "run_metrics", "validation_curves"]


def run_metrics(out: Path, run: dict) -> list[dict]:
    """The rows of a grid run's ``metrics.jsonl`` (``[]`` when it has none)."""
    return read_rows(out / run.get("folder", f"runs/{run['task']}/{run['arm']}/seed{run['seed']}") / "metrics.jsonl")


@attrs.frozen
class ArmCurve:
    """One task × arm: its seeds' validation curves on common steps.

    Attributes:
      task, arm, candidate, metric: what was scored (``candidate`` e.g. ``"teacher"``).
      steps: the common steps, the runs' last one included.
      seeds: ``((seed, values at steps), …)``.
      val_rows: rows of ``val`` behind each point (``None`` when the runs did not say).
      runs: the arm's runs, curve or not (``len(seeds) < runs``: some lack one).
    """

    task: str
    arm: str
    candidate: str
    metric: str
    steps: tuple[int, ...]
    seeds: tuple[tuple[int, tuple[float, ...]], ...]
    val_rows: int | None = None
    runs: int = 0

    @property
    def complete(self) -> bool:
        """Every run of the arm has a curve, ending at the runs' last step."""
        return len(self.seeds) >= self.runs and bool(self.steps)

    @property
    def mean(self) -> tuple[float, ...]:
        """``v̄(t)``: the mean over seeds at each step."""
        return tuple(fmean(v[i] for _, v in self.seeds) for i in range(len(self.steps)))

    @property
    def rise(self) -> float | None:
        """``v̄(T) − max_{t ≤ 2T/3} v̄(t)``; ``None`` without a point in the first two thirds."""
        if not self.steps:
            return None
        mean, last = self.mean, self.steps[-1]
        early = [v for s, v in zip(self.steps, mean) if s <= 2 * last / 3]
        return mean[-1] - max(early) if early else None

    @property
    def standard_error(self) -> float | None:
        """``√(v̄(T)(1 − v̄(T))/n)`` of the last mean point (a score in [0, 1])."""
        if not self.val_rows or not self.steps:
            return None
        p = min(max(self.mean[-1], 0.0), 1.0)
        return math.sqrt(p * (1 - p) / self.val_rows)

    @property
    def converged(self) -> bool | None:
        """``rise ≤ standard_error``; ``None`` when either is unknown or a seed lacks its curve."""
        if not self.complete or self.rise is None or self.standard_error is None:
            return None
        return self.rise <= self.standard_error


def run_curve(out: Path, run: dict) -> tuple[str, dict[int, float]] | None:
    """``(candidate, {step: value})`` of one run's curve, its ``results.json`` val score at
    its last step; ``None`` when it logged none. The points come from ``results.json``
    (``curve.points``) or, for results written before it held them, ``metrics.jsonl``."""
    metric, recorded = run["metric"], run.get("curve", {})
    if recorded.get("points") and recorded.get("candidate"):
        points = {int(step): value for step, value in recorded["points"].items()}
        return recorded["candidate"], _with_final(points, run, recorded["candidate"], metric)
    rows = run_metrics(out, run)
    candidate = recorded.get("candidate")
    if candidate is None:  # results written before the candidate was recorded: read the keys
        found = sorted({c for r in rows for k in r if (c := curve_candidate(k, metric)) is not None})
        if len(found) != 1:
            return None
        candidate = found[0]
    key = curve_key(candidate, metric)
    points = {r["step"]: r[key] for r in rows if key in r}
    return (candidate, _with_final(points, run, candidate, metric)) if points else None


def _with_final(points: dict[int, float], run: dict, candidate: str, metric: str) -> dict[int, float]:
    final = run["candidates"].get(candidate, {}).get("val", {}).get(metric)
    return points if final is None else {**points, run["steps"]: final}


def validation_curves(results: dict[str, Any], out: str | Path) -> list[ArmCurve]:
    """One :class:`ArmCurve` per task × arm with a run that logged a curve (grid order);
    its steps are those every such seed has, ending at the runs' last step."""
    out, groups, runs = Path(out), {}, {}
    for run in results["runs"]:
        runs[run["task"], run["arm"]] = runs.get((run["task"], run["arm"]), 0) + 1
        found = run_curve(out, run)
        if found is not None:
            groups.setdefault((run["task"], run["arm"], found[0], run["metric"]), []).append((run, found[1]))
    curves = []
    for (task, arm, candidate, metric), members in groups.items():
        last = max(m["steps"] for m, _ in members)
        steps = sorted(set.intersection(*(set(p) for _, p in members)))
        common = tuple(steps) if steps and steps[-1] == last else ()
        rows = {m["curve"]["val_rows"] for m, _ in members if "curve" in m}
        curves.append(ArmCurve(
            task, arm, candidate, metric, common,
            tuple((m["seed"], tuple(p[s] for s in common)) for m, p in members),
            rows.pop() if len(rows) == 1 else None, runs[task, arm],
        ))
    return curves
