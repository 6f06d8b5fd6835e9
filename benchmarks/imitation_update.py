"""The imitation update inside real MoIL steps: closed-form gradient and subnormal flushing on/off.

Five MoIL arms with one ``Hybrid(r)`` student, ``Gradient(1)``, ``HalfLife(100)`` and
the same teacher optimiser, plus ``full_ft`` for scale, timed side by side round-robin in one
process (``common.interleaved``):

* ``moil`` — as the library runs it: closed-form imitation gradient, subnormals flushed;
* ``no_flush`` — the same with ``moil.subnormals.flush_subnormals`` replaced by a no-op;
* ``autograd`` — the gradient through autograd instead (the solver's loss is a wrapper of
  ``imitation_loss``, which has no closed form), subnormals flushed;
* ``autograd_no_flush`` — both off: the imitation step as it was before either change;
* ``fit_only`` — the student with ``solver=FitOnly()`` (an ALS fit at the end, not timed):
  the update is the EMA alone.

With ``--baseline REV``, also ``moil@REV`` and ``full_ft@REV``: the same two arms with the
optimiser, solver and imitation code of git revision ``REV`` (read with ``git show``;
``imitation_profile.baseline_patch``), so a change is measured side by side with the code
before it. ``--arms`` picks a subset of the arms.

Reported per arm: the step's CPU ms, and the CPU ms of ``Imitation.update`` (EMA + the
student's step) measured in place inside those steps, so caches are as cold as in training.

Usage: ``python benchmarks/imitation_update.py --size vilt-b32 --threads 1 [--rounds N]
[--baseline HEAD] [--arms moil full_ft]``.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import imitation_profile

from moil.approx import Hybrid
from moil.momentum import HalfLife
from moil.objectives import imitation_loss
from moil.recipes import FullFineTune, MoIL, Student, default_optimizer
from moil.recipes import imitation as imitation_module
from moil.solvers import ALSFit, FitOnly, Gradient

ARMS = ("moil", "no_flush", "autograd", "autograd_no_flush", "fit_only", "full_ft")
DEFAULTS = {"tiny": (3, 3), "demo": (2, 5), "vilt-b32": (1, 3), "vilt-l": (1, 1)}


def _autograd_loss(student, target):
    return imitation_loss(student, target)  # not `imitation_loss` itself: no closed form


def make_arms(setup: common.Setup, baseline: str | None = None, names=ARMS) -> dict:
    """``({arm: step()}, {arm: [in-step Imitation.update CPU seconds]})``."""
    opt = default_optimizer(total_steps=100_000)
    flush = imitation_module.flush_subnormals
    record: dict[str, list[float]] = {}
    old = imitation_profile.baseline_patch(baseline) if baseline else None

    def timed(name, flushes, solver, code=contextlib.nullcontext, student=None):
        student = student or Hybrid(setup.rank)
        recipe = MoIL(setup.task_loss, student, momentum=HalfLife(100), optimizer=opt, solver=solver)
        with code():
            step = common.recipe_step(recipe, setup)

        def run() -> None:
            with code():
                update = imitation_module.Imitation.update

                def measured(self, *args, **kwargs):
                    start = time.process_time()
                    out = update(self, *args, **kwargs)
                    record.setdefault(name, []).append(time.process_time() - start)
                    return out

                imitation_module.Imitation.update = measured
                imitation_module.flush_subnormals = flush if flushes else contextlib.nullcontext
                try:
                    step()
                finally:
                    imitation_module.Imitation.update = update
                    imitation_module.flush_subnormals = flush

        return run

    def full_ft(code=contextlib.nullcontext):
        with code():
            step = common.recipe_step(FullFineTune(setup.task_loss, optimizer=opt), setup)

        def run() -> None:
            with code():
                step()

        return run

    arms = {
        "moil": lambda: timed("moil", True, Gradient()),
        "no_flush": lambda: timed("no_flush", False, Gradient()),
        "autograd": lambda: timed("autograd", True, Gradient(loss=_autograd_loss)),
        "autograd_no_flush": lambda: timed("autograd_no_flush", False, Gradient(loss=_autograd_loss)),
        "fit_only": lambda: timed("fit_only", True, Gradient(), student=Student(
            Hybrid(setup.rank), solver=FitOnly(), refit=ALSFit(), final_fit=True)),
        "full_ft": full_ft,
    }
    built = {n: arms[n]() for n in names}
    if old is not None:
        built[f"moil@{baseline}"] = timed(f"moil@{baseline}", True, Gradient(), old)
        built[f"full_ft@{baseline}"] = full_ft(old)
    return built, record


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(
        __doc__.splitlines()[0], steps_help="timed steps per arm per round", rounds=True, precision=True
    )
    p.add_argument("--baseline", metavar="REV", help="also run moil and full_ft with git revision REV's code")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="the arms to run (default: all)")
    args = common.parse(p, argv)
    setup = common.build(args.size, args.device, args.seed, args.precision)
    steps, rounds = DEFAULTS[args.size]
    steps, rounds = common.steps_and_rounds(args, steps, rounds)
    names = [n for n in ARMS if n in args.arms or n == "full_ft"]
    arms, record = make_arms(setup, args.baseline, names)
    times = common.interleaved(arms, rounds=rounds, steps=steps, warmup=1, device=setup.device)
    update_ms = {n: 1e3 * statistics.median(v[1:] or v) for n, v in record.items()}  # drop the warm-up
    rows = []
    for name in arms:
        ms = update_ms.get(name, float("nan"))
        reference = f"full_ft@{args.baseline}" if name.endswith(f"@{args.baseline}") else "full_ft"
        rows.append([
            name,
            1e3 * times[name]["cpu_median"],
            common.paired_ratio(times, name, reference, cpu=True),
            ms,
            ms / update_ms["moil"] if name in update_ms and "moil" in update_ms else float("nan"),
        ])
    print(
        f"imitation_update — {setup.description}; Hybrid({setup.rank}) student, Gradient(1); "
        f"{rounds} rounds × {steps} steps; CPU time"
    )
    print(common.table(["arm", "step cpu ms", "× its full_ft (paired)", "Imitation.update cpu ms", "÷ moil's"], rows))
    return common.report(
        args, setup, {"steps": steps, "rounds": rounds, "seconds_per_step": times, "imitation_update_ms": update_ms}
    )


if __name__ == "__main__":
    main()
