"""The jobs of a grid and the runner that carries them out in one process."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import attrs

from moil.harness.build import build_backbone, load_data
from moil.harness.config import Config
from moil.harness.data import DemoData
from moil.harness.run import run_one

__all__ = ["Job", "Runner"]


@attrs.frozen
class Job:
    """One run of a grid: an arm × task × seed at one learning rate, and where it goes."""

    task: str
    arm: str
    seed: int
    lr: float
    folder: Path
    steps: int
    splits: tuple[str, ...]
    label: str


class Runner:
    """Runs the jobs of one config: the data loaded once, one backbone per task
    built on first use."""

    def __init__(self, config: Config, data: DemoData | None = None) -> None:
        self.config, self.data, self.backbones = config, data, {}
        self.arms = {a.name: a for a in config.arms}

    def __call__(self, job: Job, resume: bool, on_step: Callable[[int, dict], None] | None = None) -> dict:
        if self.data is None:
            self.data = load_data(self.config)
        if job.task not in self.backbones:
            self.backbones[job.task] = build_backbone(self.config, job.task, self.data)
        return run_one(
            self.config, self.arms[job.arm], job.task, job.seed, job.lr, self.backbones[job.task], self.data,
            job.folder, steps=job.steps, splits=job.splits, resume=resume, on_step=on_step,
        )
