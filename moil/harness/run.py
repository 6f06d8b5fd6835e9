"""One run: build the recipe, train it, score every candidate, write the run folder.

One *run* = one arm × task × seed × learning rate: build the recipe, train it on
the training split, evaluate every candidate it offers (merged students,
teacher, momentum targets, heads) on the given splits, and record time, peak
memory and stored size. Everything a run writes lands in its own folder
(``run.json`` — the manifest, written first —, ``metrics.jsonl``, ``results.json``,
compact students ``student-<name>/``), under the folder's writer lock, each small
file atomically (:mod:`moil.harness.run_folder`). Besides ``train.checkpoint_every``,
a run checkpoints every :data:`CHECKPOINT_SECONDS` of training, so a SIGKILL loses
at most that much.
"""

from __future__ import annotations

import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

from moil.checkpoint import previous_path
from moil.distributed import broadcast, from_env
from moil.export import save_student
from moil.harness.batches import train_stream
from moil.harness.build import build_recipe, device_of, run_steps
from moil.harness.config import ArmSpec, Config, config_dict
from moil.harness.data import DemoData
from moil.harness.imitation import imitation_report
from moil.harness.memory import PeakMemory
from moil.harness.metrics_log import MetricsLog, read_rows
from moil.harness.run_folder import (
    MANIFEST,
    check_apart,
    hold,
    inputs_of,
    plan_run,
    run_manifest,
    write_json,
)
from moil.harness.scoring import PRIMARY_METRIC, ValidationCurve, curve_key, score
from moil.train import CHECKPOINT, train

__all__ = ["CHECKPOINT_SECONDS", "check_run", "discard_run", "run_one", "save_students"]

#: Seconds of training between time-based checkpoints.
CHECKPOINT_SECONDS = 300.0


def discard_run(run_dir: Path) -> None:
    """Remove what a previous run wrote into ``run_dir`` (``--overwrite``); other files stay."""
    for name in (MANIFEST, CHECKPOINT, previous_path(run_dir / CHECKPOINT).name, "metrics.jsonl",
                 "results.json", "config.toml"):
        (run_dir / name).unlink(missing_ok=True)
    for student in run_dir.glob("student-*"):
        shutil.rmtree(student, ignore_errors=True)


def save_students(recipe: Any, state: Any, backbone: Any, run_dir: Path, extra: dict) -> None:
    """Each stored student of the run, with its trained heads, as ``run_dir/student-<name>``."""
    candidates = recipe.candidates(state, backbone)
    for name, (adapter, params) in recipe.students_of(state, backbone).items():
        heads = {k: v for k, v in candidates[f"student/{name}"].items() if k in backbone.heads}
        save_student(run_dir / f"student-{name}", adapter, params, heads=heads, extra=extra, overwrite=True)


def check_run(config: Config, arm: ArmSpec, task: str, seed: int, lr: float, steps: int, run_dir: Path, *,
              resume: bool, overwrite: bool, made_by: str) -> str:
    """What :func:`run_one` will do with ``run_dir`` (``"fresh"``, ``"overwrite"``, ``"resume"``,
    ``"done"``), checked by reading only — recipe included — so a refusal changes nothing.

    Raises:
      ValueError: a ``RunFolderError``, ``ConfigError`` or checkpoint error naming the problem.
    """
    manifest = run_manifest(config_dict(config), arm.name, task, seed, lr, steps, made_by)
    check_apart(run_dir, inputs_of(config), "--out")
    plan = plan_run(run_dir, manifest, resume=resume, overwrite=overwrite, checkpoint=CHECKPOINT)
    build_recipe(arm, task, lr, steps)
    return plan


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
    overwrite: bool = False,
    keep_checkpoint: bool = False,
    made_by: str = "moil ablate",
    before_training: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate one run; write ``run.json``, ``metrics.jsonl``, ``results.json``, students.

    Under ``run_dir``'s lock, :func:`~moil.harness.run_folder.plan_run` decides first,
    reading only: a folder holding a run needs ``resume`` (the manifest must match,
    each difference is named) or ``overwrite`` (the old run's files are removed).
    ``before_training()`` runs after the manifest is written (e.g. ``config.toml``).

    Raises:
      RunFolderError, ResumeMismatchError, RunFolderLockedError: see
        :mod:`moil.harness.run_folder`; the folder is left as it was.
    """
    steps = steps or run_steps(config, data, task)  # data.epochs × batches an epoch, or train.steps
    recipe = build_recipe(arm, task, lr, steps)
    manifest = run_manifest(config_dict(config), arm.name, task, seed, lr, steps, made_by)
    world = from_env()
    if config.train.eval_every and world.size > 1:
        raise ValueError(
            f"train.eval_every = {config.train.eval_every}: validation curves are scored in one process; "
            "under torchrun set train.eval_every = 0 (the run is still scored at its end)."
        )
    if not world.main:  # under torchrun rank 0 owns the folder; the others train alongside it
        return _train_and_score(config, arm, task, seed, lr, recipe, backbone, data, run_dir, steps, splits,
                                None, broadcast(None, world), keep_checkpoint, main=False)
    with hold(run_dir):
        plan = plan_run(run_dir, manifest, resume=resume, overwrite=overwrite, checkpoint=CHECKPOINT)
        if plan == "overwrite":
            discard_run(run_dir)
        write_json(run_dir / MANIFEST, manifest)
        if before_training is not None:
            before_training()
        return _train_and_score(config, arm, task, seed, lr, recipe, backbone, data, run_dir, steps, splits,
                                on_step, broadcast(plan in ("resume", "done"), world), keep_checkpoint)


def _train_and_score(config, arm, task, seed, lr, recipe, backbone, data, run_dir, steps, splits, on_step,
                     resume, keep_checkpoint, main: bool = True) -> dict[str, Any]:
    # The curve's batches are made before the peak-memory window opens; its points run inside it.
    every = config.train.eval_every or None
    curve = ValidationCurve.of(recipe, backbone, config, data, task) if every and main else None
    curve_seconds = 0.0
    with MetricsLog(run_dir / "metrics.jsonl", resume) if main else nullcontext() as log, PeakMemory() as memory:
        def record(step: int, metrics: dict) -> None:
            if log is not None:
                log.write(step, metrics)
            if on_step is not None:
                on_step(step, metrics)

        def validate(state: Any) -> dict:
            nonlocal curve_seconds  # kept out of train_seconds: the curve is measurement, not training
            began = time.perf_counter()
            points = curve(state)
            curve_seconds += time.perf_counter() - began
            return points

        started = time.perf_counter()
        state = train(
            recipe, backbone, train_stream(data, task, config.data.batch_size, seed, device_of(config)),
            steps=steps, seed=seed, run_dir=run_dir, resume=resume, on_step=record,
            checkpoint_every=config.train.checkpoint_every or None, checkpoint_seconds=CHECKPOINT_SECONDS,
            precision=config.train.precision, validate=None if curve is None else validate,
            validate_every=None if curve is None else every,
        )
        seconds = time.perf_counter() - started - curve_seconds
    if not main:
        return {}
    scores = score(recipe, state, backbone, config, data, task, splits)
    save_students(recipe, state, backbone, run_dir, {"arm": arm.name, "task": task, "seed": seed, "lr": lr})
    if not keep_checkpoint:
        (run_dir / CHECKPOINT).unlink(missing_ok=True)
        previous_path(run_dir / CHECKPOINT).unlink(missing_ok=True)
    result = {
        "task": task, "arm": arm.name, "recipe": arm.recipe, "seed": seed, "lr": lr, "steps": steps,
        "primary": recipe.primary, "metric": PRIMARY_METRIC[task],
        "candidates": scores, "train_seconds": seconds, "peak_memory_mib": memory.mib,
        "model_parameters": backbone.num_parameters(),
        "imitation": imitation_report(recipe, state, backbone),
    }
    if curve is not None:
        # The points are read back from metrics.jsonl, so a resumed run keeps those logged before it stopped.
        name = curve.candidate(state)[0]
        key = curve_key(name, curve.metric)
        rows = read_rows(run_dir / "metrics.jsonl")
        result["curve"] = {"every": every, "candidate": name, "val_rows": curve.rows, "seconds": curve_seconds,
                           "points": {str(r["step"]): r[key] for r in rows if key in r}}
    write_json(run_dir / "results.json", result)
    return result
