"""Imitation quality: a student's final weight distance to its target vs the Eckart–Young floor.

A short MoIL run (``--steps`` task steps on fresh random ITM batches, reference AdamW
schedule, momentum ``HalfLife(steps / 10)``) trains, from one teacher, four students of
equal stored size: ``Hybrid(r)`` and ``LowRank(r_eq)``, each with the reference
``Gradient(1)`` solver and with ``Gradient(k)`` (with its own learning-rate schedule over
``steps·k`` updates, and — ``-shared-sched`` — with the recipe's schedule over ``steps``,
which a Gradient(k) student exhausts after ``steps/k`` task steps). At the end, the closed-form fits
``SVDFit`` (LowRank) and ``ALSFit`` (Hybrid) are applied to the final target, starting from
the Gradient(1) students. For every student

    distance = sqrt(Σ_t ‖W̄_t − Ŵ_t‖_F²)      (q/k/v weights; W̄ = the final momentum target)

is compared with the Eckart–Young floor at the equal-size rank ``r_eq``,
``sqrt(Σ_t Σ_{i>r_eq} s_i(W̄_t − W0_t)²)`` — no LowRank(r_eq) student gets below it; a
Hybrid of equal size may (it is not a rank-``r_eq`` update). ``‖Δ‖ = sqrt(Σ_t ‖W̄_t − W0_t‖²)``
is the distance of the untrained (zero) student.

Usage: ``python benchmarks/imitation_quality.py --size demo [--steps N] [--k K] [--json PATH]``.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common

from moil.approx import Hybrid, LowRank
from moil.momentum import HalfLife
from moil.schedules import WarmupLinearDecay
from moil.recipes import MoIL, Student, default_optimizer
from moil.solvers import ALSFit, Gradient, SVDFit

DEFAULT_STEPS = {"tiny": 20, "demo": 40, "vilt-b32": 8}


def _key(name: str) -> str:
    return name.replace("/", "_")  # MoIL student names may not contain "/"


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0], steps_help="MoIL task steps (teacher fine-tuning)")
    p.add_argument(
        "--k",
        type=int,
        default=10,
        help="imitation steps per task step of the Gradient(k) students",
    )
    p.add_argument(
        "--lr", type=float, default=1e-4, help="teacher's peak learning rate (reference 1e-4)"
    )
    p.add_argument(
        "--student-lr",
        type=float,
        default=None,
        help="students' peak learning rate (default: --lr)",
    )
    args = common.parse(p, argv)
    setup = common.build(args.size, args.device, args.seed)
    steps = args.steps or DEFAULT_STEPS[args.size]
    bb, r = setup.backbone, setup.rank
    r_eq = common.equal_size_rank(bb, Hybrid(r))
    k, student_lr = args.k, args.student_lr or args.lr
    # A student's learning-rate schedule advances once per *optimiser* step, i.e. k times
    # per task step under Gradient(k): its own schedule must span steps·k updates. The
    # "shared-sched" rows keep the recipe's schedule (spanning `steps`) to show the pitfall.
    own = WarmupLinearDecay(student_lr, total_steps=steps * k, warmup=0.1)
    pool = {
        "hybrid/grad1": Student(Hybrid(r)),
        f"hybrid/grad{k}": Student(Hybrid(r), solver=Gradient(k), lr=own),
        f"hybrid/grad{k}-shared-sched": Student(Hybrid(r), solver=Gradient(k)),
        "lowrank/grad1": Student(LowRank(r_eq)),
        f"lowrank/grad{k}": Student(LowRank(r_eq), solver=Gradient(k), lr=own),
        f"lowrank/grad{k}-shared-sched": Student(LowRank(r_eq), solver=Gradient(k)),
    }
    recipe = MoIL(
        setup.task_loss,
        {_key(n): s for n, s in pool.items()},
        momentum=HalfLife(max(1.0, steps / 10)),
        optimizer=default_optimizer(args.lr, steps),
        student_optimizer=default_optimizer(student_lr, steps),
    )
    state = recipe.init(bb, seed=args.seed)
    start = time.perf_counter()
    for step in range(steps):
        state, _ = recipe.step(state, bb, setup.new_batch(1000 + step))
    common.sync(setup.device)
    train_s = time.perf_counter() - start

    base, target = bb.base(), state.targets["m0"].target
    students = {n: (s.adapter(bb), state.students[_key(n)]) for n, s in pool.items()}
    fit_seconds = {}
    for name, solver, source in (
        ("lowrank/svd_fit", SVDFit(), "lowrank/grad1"),
        ("hybrid/als_fit", ALSFit(), "hybrid/grad1"),
    ):
        adapter, params = students[source]
        start = time.perf_counter()
        students[name] = (adapter, solver.fit(adapter, base, target, params))
        common.sync(setup.device)
        fit_seconds[name] = time.perf_counter() - start

    floor = common.ey_floor(base, target, r_eq)
    floor_r = common.ey_floor(base, target, r)
    delta = common.weight_distance(target, base)
    rows, ratios, distances = [["zero student (W0)", "-", delta, delta / floor, 1.0, "-"]], {}, {}
    order = [n for n in pool if n.startswith("hybrid")] + ["hybrid/als_fit"]
    order += [n for n in pool if n.startswith("lowrank")] + ["lowrank/svd_fit"]
    for name in order:
        adapter, params = students[name]
        d = common.weight_distance(target, adapter.merge(params, base))
        distances[name], ratios[f"{name}/ey_floor"] = d, d / floor
        rows.append(
            [
                name,
                adapter.num_params(base),
                d,
                d / floor,
                d / delta,
                f"{fit_seconds[name]:.2f}" if name in fit_seconds else "-",
            ]
        )
    print(
        f"imitation_quality — {setup.description}; device {setup.device}; {steps} MoIL steps "
        f"(lr {args.lr}, student lr {student_lr}, HalfLife({max(1.0, steps / 10):g})) "
        f"in {train_s:.1f} s; "
        f"Hybrid({r}) vs LowRank({r_eq}) at equal stored size"
    )
    print(
        f"target: ‖Δ‖ = ‖W̄ − W0‖ = {delta:.4g}; Eckart–Young floor at rank {r_eq} = {floor:.4g} "
        f"(at rank {r}: {floor_r:.4g})"
    )
    print(common.table(["student", "stored", "distance", "÷ EY floor", "÷ ‖Δ‖", "fit s"], rows))
    return common.report(
        args,
        setup,
        {
            "hybrid_rank": r,
            "lora_rank": r_eq,
            "steps": steps,
            "k": k,
            "lr": args.lr,
            "student_lr": student_lr,
            "train_seconds": train_s,
            "delta_norm": delta,
            "ey_floor": floor,
            "ey_floor_hybrid_rank": floor_r,
            "distances": distances,
            "fit_seconds": fit_seconds,
            "ratios": ratios,
        },
    )


if __name__ == "__main__":
    main()
