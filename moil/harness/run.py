"""One run: build the recipe, train it, score every candidate, write the run folder.

One *run* = one arm × task × seed × learning rate: build the recipe, train it on
the training split, evaluate every candidate it offers (merged students,
teacher, momentum targets, heads) on the given splits, and record time, peak
memory and stored size. Everything a run writes lands in its own folder
(``metrics.jsonl``, ``results.json``, compact students ``student-<name>/``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from moil.export import save_student
from moil.harness.batches import train_stream
from moil.harness.build import build_recipe, device_of
from moil.harness.config import ArmSpec, Config
from moil.harness.data import DemoData
from moil.harness.imitation import imitation_report
from moil.harness.memory import PeakMemory
from moil.harness.metrics_log import MetricsLog
from moil.harness.scoring import PRIMARY_METRIC, score
from moil.train import CHECKPOINT, train

__all__ = ["run_one", "save_students"]


def save_students(recipe: Any, state: Any, backbone: Any, run_dir: Path, extra: dict) -> None:
    """Each stored student of the run, with its trained heads, as ``run_dir/student-<name>``."""
    candidates = recipe.candidates(state, backbone)
    for name, (adapter, params) in recipe.students_of(state, backbone).items():
        heads = {k: v for k, v in candidates[f"student/{name}"].items() if k in backbone.heads}
        save_student(run_dir / f"student-{name}", adapter, params, heads=heads, extra=extra, overwrite=True)


def run_one(
    config: Config,
    arm: ArmSpec,
    task: str,
    seed: int,
    lr: float,
    backbone,
    data: DemoData,
    run_dir: Path,
    *,
    steps: int | None = None,
    splits: tuple[str, ...] = ("val", "test"),
    on_step: Callable[[int, dict], None] | None = None,
    resume: bool = False,
    keep_checkpoint: bool = False,
) -> dict[str, Any]:
    """Train and evaluate one run; write ``metrics.jsonl``, ``results.json``, students."""
    steps = steps or config.train.steps
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe = build_recipe(arm, task, lr, steps)
    with MetricsLog(run_dir / "metrics.jsonl", resume) as log, PeakMemory() as memory:
        def record(step: int, metrics: dict) -> None:
            log.write(step, metrics)
            if on_step is not None:
                on_step(step, metrics)

        started = time.perf_counter()
        state = train(
            recipe, backbone, train_stream(data, task, config.data.batch_size, seed, device_of(config)),
            steps=steps, seed=seed, run_dir=run_dir, resume=resume, on_step=record,
            checkpoint_every=config.train.checkpoint_every or None, precision=config.train.precision,
        )
        seconds = time.perf_counter() - started
    scores = score(recipe, state, backbone, config, data, task, splits)
    save_students(recipe, state, backbone, run_dir, {"arm": arm.name, "task": task, "seed": seed, "lr": lr})
    if not keep_checkpoint:
        (run_dir / CHECKPOINT).unlink(missing_ok=True)
    result = {
        "task": task, "arm": arm.name, "recipe": arm.recipe, "seed": seed, "lr": lr, "steps": steps,
        "primary": recipe.primary, "metric": PRIMARY_METRIC[task],
        "candidates": scores, "train_seconds": seconds, "peak_memory_mib": memory.mib,
        "model_parameters": backbone.num_parameters(),
        "imitation": imitation_report(recipe, state, backbone),
    }
    (run_dir / "results.json").write_text(json.dumps(result, indent=1))
    return result
