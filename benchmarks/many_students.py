"""One teacher, k students: a k-student MoIL run vs k separate single-student runs.

Students never enter the forward pass (METHOD.md), so one teacher run can feed any number
of them; each extra student costs only its weight-space imitation step (and an EMA if its
momentum differs). The students vary rank, approximation and momentum:

* ``s0`` ``Hybrid(r)``, ``s1`` ``LowRank(r_eq)`` (same stored size), both with the default
  momentum; ``s2`` ``Hybrid(r/2)`` and ``s3`` ``LowRank(r)`` with another momentum
  (a second EMA target).

Arms timed side by side, round-robin, in one process: ``joint_k`` (MoIL with students
``s0..s{k-1}``, k = 1, 2, 4), ``solo_i`` (MoIL with ``s_i`` alone) and ``full_ft`` (the
teacher alone, for the per-student overhead). The k separate runs cost
``Σ_{i<k} solo_i``. All arms take the same steps on the same batch, so at the end each
joint student is compared with its solo twin (they should agree up to rounding). One more
arm, ``fit_only_4``, runs the same four students with ``solver=FitOnly()`` (set by a final
``ALSFit``/``SVDFit`` only, not timed): what a student costs per step when it takes no steps.

Usage: ``python benchmarks/many_students.py --size demo [--steps N] [--json PATH]``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import attrs
import common

from moil.approx import Hybrid, LowRank
from moil.momentum import HalfLife
from moil.recipes import FullFineTune, MoIL, Student, default_optimizer
from moil.solvers import ALSFit, FitOnly, SVDFit

KS = (1, 2, 4)
DEFAULTS = {"tiny": (3, 5), "demo": (2, 5), "vilt-b32": (1, 3)}


def students(setup: common.Setup) -> dict[str, Student]:
    r = setup.rank
    r_eq = common.equal_size_rank(setup.backbone, Hybrid(r))
    return {
        "s0": Student(Hybrid(r)),
        "s1": Student(LowRank(r_eq)),
        "s2": Student(Hybrid(max(1, r // 2)), momentum=HalfLife(20)),
        "s3": Student(LowRank(r), momentum=HalfLife(20)),
    }


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0], steps_help="timed steps per arm per round", rounds=True)
    args = common.parse(p, argv)
    setup = common.build(args.size, args.device, args.seed)
    steps, rounds = DEFAULTS[args.size]
    steps, rounds = common.steps_and_rounds(args, steps, rounds)
    pool, opt = students(setup), default_optimizer(total_steps=100_000)

    def moil(chosen):
        return common.recipe_step(
            MoIL(setup.task_loss, chosen, momentum=HalfLife(100), optimizer=opt), setup
        )

    names = list(pool)
    arms = {f"joint_{k}": moil({n: pool[n] for n in names[:k]}) for k in KS}
    arms.update({f"solo_{n}": moil({n: pool[n]}) for n in names})
    arms["fit_only_4"] = moil({n: attrs.evolve(s, solver=FitOnly(), final_fit=True,
                                               refit=SVDFit() if isinstance(s.approx, LowRank) else ALSFit())
                               for n, s in pool.items()})
    arms["full_ft"] = common.recipe_step(FullFineTune(setup.task_loss, optimizer=opt), setup)
    times = common.interleaved(arms, rounds=rounds, steps=steps, warmup=1, device=setup.device)
    med = {k: v["median"] for k, v in times.items()}

    joint = arms[f"joint_{KS[-1]}"].state().students
    drift = max(
        float((joint[n][key] - arms[f"solo_{n}"].state().students[n][key]).abs().max())
        for n in names
        for key in joint[n]
    )
    rows, ratios, per_student_share = [], {}, {}
    for k in KS:
        separate = sum(med[f"solo_{n}"] for n in names[:k])
        ratios[f"joint_{k}/separate_{k}"] = med[f"joint_{k}"] / separate
        ratios[f"joint_{k}/full_ft"] = med[f"joint_{k}"] / med["full_ft"]
        per_student = (med[f"joint_{k}"] - med["full_ft"]) / k
        # CPU time (one intra-op thread): steadier than wall time on a shared machine.
        cpu_joint = common.paired_ratio(times, f"joint_{k}", "full_ft", cpu=True)
        ratios[f"joint_{k}/full_ft (cpu, paired)"] = cpu_joint
        per_student_share[k] = (cpu_joint - 1) / k  # may be < 0 in noise: not a ratio
        rows.append(
            [
                k,
                ", ".join(names[:k]),
                1e3 * med[f"joint_{k}"],
                1e3 * separate,
                ratios[f"joint_{k}/separate_{k}"],
                ratios[f"joint_{k}/full_ft"],
                1e3 * per_student,
                cpu_joint,
                100 * (cpu_joint - 1) / k,
            ]
        )
    desc = {
        n: f"{type(s.approx).__name__}({s.approx.rank})" + (" m=HalfLife(20)" if s.momentum else "")
        for n, s in pool.items()
    }
    print(
        f"many_students — {setup.description}; device {setup.device}; students {desc}; "
        f"{rounds} rounds × {steps} steps, median of per-round means"
    )
    print(
        common.table(
            [
                "k",
                "students",
                "one run ms/step",
                "k runs ms/step",
                "one/k runs",
                "one/full_ft",
                "ms per student over full_ft",
                "one/full_ft (cpu, paired)",
                "% of a full-FT step per student (cpu)",
            ],
            rows,
        )
    )
    print(
        "solo runs ms/step: "
        + ", ".join(f"{n} {1e3 * med[f'solo_{n}']:.1f}" for n in names)
        + f"; full_ft {1e3 * med['full_ft']:.1f}"
    )
    print(f"max |θ_joint − θ_solo| over all students after {1 + rounds * steps} steps: {drift:.3g}")
    ratios["fit_only_4/full_ft"] = med["fit_only_4"] / med["full_ft"]
    fit_cpu = ratios["fit_only_4/full_ft (cpu, paired)"] = common.paired_ratio(times, "fit_only_4", "full_ft", cpu=True)
    print(f"fit_only_4 (the four students, FitOnly): {1e3 * med['fit_only_4']:.1f} ms/step, × full_ft "
          f"{ratios['fit_only_4/full_ft']:.3f} (cpu, paired {fit_cpu:.3f}): {100 * (fit_cpu - 1) / 4:.1f} % "
          "of a full-FT step per student")
    return common.report(
        args,
        setup,
        {
            "students": desc,
            "steps": steps,
            "rounds": rounds,
            "seconds_per_step": times,
            "max_abs_joint_minus_solo": drift,
            "ratios": ratios,
            "per_student_share_of_full_ft_cpu": per_student_share,
        },
    )


if __name__ == "__main__":
    main()
