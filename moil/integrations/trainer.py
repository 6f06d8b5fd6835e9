"""MoIL's imitation inside a Hugging Face ``transformers.Trainer`` run.

The Trainer fine-tunes the model as it always does (its optimiser, schedule, devices,
gradient accumulation, checkpoints); :class:`MoILCallback` adds the momentum targets and
students at the cost of the imitation alone::

    observer = ImitationObserver({"hybrid": Hybrid(8)}, targets=["query", "key", "value"])
    trainer = Trainer(model, args, train_dataset=data, callbacks=[MoILCallback(observer)])
    trainer.train()                                   # or train(resume_from_checkpoint=True)
    # students in <output_dir>/moil-students/<name>/ (moil.export.load_student reads them)

The observer runs in ``on_pre_optimizer_step`` — after the gradients, before the step —
so it sees what :class:`moil.recipes.MoIL` sees. Its state is saved beside each Trainer
checkpoint (``checkpoint-N/moil-observer.safetensors``) and restored when the Trainer
resumes from one.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from moil.export import save_student
from moil.observer import ImitationObserver, ObserverState
from moil.schedules import bind_run
from moil.train import load_state, save_state

__all__ = ["OBSERVER_FILE", "STUDENTS_DIR", "MoILCallback"]

OBSERVER_FILE = "moil-observer.safetensors"
STUDENTS_DIR = "moil-students"


class MoILCallback(TrainerCallback):
    """Runs an :class:`~moil.observer.ImitationObserver` alongside a ``Trainer``.

    Args:
      observer: what to imitate and how; its run-length schedules are bound to the
        Trainer's ``max_steps``.
      seed: the students' initialisation seed.
      export: write the finalized students to ``<output_dir>/moil-students/`` at the end.

    Raises:
      TypeError: ``observer`` is not an :class:`~moil.observer.ImitationObserver` (e.g. a bare
        approximation), ``seed`` not an integer, ``export`` not a bool.

    Attributes:
      state: the :class:`~moil.observer.ObserverState` (``None`` before training starts).
      metrics: the last update's metrics (``momentum/m0``, ``distance/<student>``, …).
    """

    def __init__(self, observer: ImitationObserver, *, seed: int = 0, export: bool = True) -> None:
        if not isinstance(observer, ImitationObserver):
            raise TypeError(
                f"MoILCallback: observer must be a moil.observer.ImitationObserver, got {observer!r}; wrap "
                "your students, e.g. MoILCallback(ImitationObserver(Hybrid(8), targets=['query', 'key', 'value']))."
            )
        if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):  # numpy ints too
            raise TypeError(f"MoILCallback: seed must be an integer, got seed={seed!r}.")
        if not isinstance(export, bool):
            raise TypeError(f"MoILCallback: export must be True or False, got export={export!r}.")
        self.observer, self.seed, self.export = observer, int(seed), export
        self.bound: ImitationObserver | None = None
        self.state: ObserverState | None = None
        self.metrics: dict[str, float] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.bound = bind_run(self.observer, state.max_steps)
        self.state = self.bound.init(model, seed=self.seed)
        saved = Path(args.output_dir) / f"checkpoint-{state.global_step}" / OBSERVER_FILE
        if state.global_step > 0:
            if not saved.exists():
                raise FileNotFoundError(
                    f"MoILCallback: the Trainer resumes at step {state.global_step} but {saved} is "
                    "missing, so the students' state is lost; resume from a checkpoint written "
                    "with this callback, or start a new run."
                )
            self.state, _ = load_state(saved, self.state)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.state, self.metrics = self.bound.update(self.state, model)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            save_state(folder / OBSERVER_FILE, self.state, {"seed": self.seed})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self.metrics:
            logs.update({f"moil/{k}": v for k, v in self.metrics.items()})

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.state = self.bound.finalize(self.state, model)
        if self.export and state.is_world_process_zero:
            for name, (adapter, params) in self.bound.students_of(self.state, model).items():
                save_student(Path(args.output_dir) / STUDENTS_DIR / name, adapter, params,
                             extra={"step": state.global_step}, overwrite=True)

    def students(self, model: Any) -> dict:
        """``{name: (Adapter, params)}`` of the current state."""
        return self.bound.students_of(self.state, model)
