"""Validation curves of a grid's runs, and whether each arm has stopped improving.

A run with ``train.eval_every = k`` logs its trained model's primary metric on ``val``
every ``k`` steps (``val/<candidate>/<metric>`` in ``metrics.jsonl``:
:class:`~moil.harness.scoring.ValidationCurve`); its last point is the run's own ``val``
score from ``results.json``. For each task × arm this module gathers the seeds' curves
and reads the *rise over the last third*:

    ``rise = v̄(T) − max_{t ≤ 2T/3} v̄(t)``

with ``v̄`` the mean over seeds and ``T`` the run's length. The arm counts as
*converged* when ``rise ≤ se``, the standard error ``√(v̄(T)(1 − v̄(T))/n)`` of a score
on ``n`` val rows: a run still rising by more than the noise of one evaluation is not
flat. The functions are pure readers; the report tables and draws what they return.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import fmean
from typing import Any

import attrs

from moil.harness.scoring import curve_key

__all__ = ["ArmCurve", "run_metrics", "validation_curves"]


def run_metrics(out: Path, run: dict) -> list[dict]:
    """The rows of a grid run's ``metrics.jsonl`` (``[]`` when it has none)."""
    path = out / run.get("folder", f"runs/{run['task']}/{run['arm']}/seed{run['seed']}") / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@attrs.frozen
class ArmCurve:
    """One task × arm: its seeds' validation curves on common steps.

    Attributes:
      task, arm, candidate, metric: what was scored (``candidate`` e.g. ``"teacher"``).
      steps: the common steps, the run's last one included.
      seeds: ``{seed: values at steps}``.
      val_rows: rows of ``val`` behind each point (``None`` when the runs did not say).
    """

    task: str
    arm: str
    candidate: str
    metric: str
    steps: tuple[int, ...]
    seeds: dict[int, tuple[float, ...]]
    val_rows: int | None = None

    @property
    def mean(self) -> tuple[float, ...]:
        """``v̄(t)``: the mean over seeds at each step."""
        return tuple(fmean(v[i] for v in self.seeds.values()) for i in range(len(self.steps)))

    @property
    def rise(self) -> float | None:
        """``v̄(T) − max_{t ≤ 2T/3} v̄(t)``; ``None`` without a point in the first two thirds."""
        mean, last = self.mean, self.steps[-1]
        early = [v for s, v in zip(self.steps, mean) if s <= 2 * last / 3]
        return mean[-1] - max(early) if early else None

    @property
    def standard_error(self) -> float | None:
        """``√(v̄(T)(1 − v̄(T))/n)`` of the last mean point (a score in [0, 1])."""
        if not self.val_rows:
            return None
        p = min(max(self.mean[-1], 0.0), 1.0)
        return math.sqrt(p * (1 - p) / self.val_rows)

    @property
    def converged(self) -> bool | None:
        """``rise ≤ standard_error``; ``None`` when either is unknown."""
        if self.rise is None or self.standard_error is None:
            return None
        return self.rise <= self.standard_error


def _points(out: Path, run: dict) -> tuple[str, dict[int, float]] | None:
    """``(candidate, {step: value})`` of one run's curve, its final ``val`` score last."""
    metric = run["metric"]
    rows = run_metrics(out, run)
    keys = sorted({k for r in rows for k in r if k == curve_key(k[4:-len(metric) - 1], metric)})
    if not keys:
        return None
    key = keys[0]
    candidate = key[len("val/"): -len(f"/{metric}")]
    points = {r["step"]: r[key] for r in rows if key in r}
    final = run["candidates"].get(candidate, {}).get("val", {}).get(metric)
    if final is not None:
        points[run["steps"]] = final  # the run's own val score (results.json), after its last step
    return candidate, points


def validation_curves(results: dict[str, Any], out: str | Path) -> list[ArmCurve]:
    """One :class:`ArmCurve` per task × arm whose runs logged a validation curve (grid
    order); steps are those every seed has."""
    out, groups = Path(out), {}
    for run in results["runs"]:
        found = _points(out, run)
        if found is not None:
            groups.setdefault((run["task"], run["arm"], found[0], run["metric"]), []).append((run, found[1]))
    curves = []
    for (task, arm, candidate, metric), members in groups.items():
        steps = sorted(set.intersection(*(set(p) for _, p in members)))
        rows = {m["curve"]["val_rows"] for m, _ in members if "curve" in m}
        curves.append(ArmCurve(
            task, arm, candidate, metric, tuple(steps),
            {m["seed"]: tuple(p[s] for s in steps) for m, p in members},
            rows.pop() if len(rows) == 1 else None,
        ))
    return curves
