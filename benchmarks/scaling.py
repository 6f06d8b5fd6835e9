"""How cost grows: step time and peak memory of full FT, LoRA and MoIL with k students, per size.

For every size in ``--sizes`` (default ``tiny demo vilt-b32 vilt-l``), on the same model,
targets (every q/k/v) and batch, training the ITM head too:

* ``full_ft`` — ``FullFineTune``: the teacher alone (dense q/k/v + heads);
* ``lora`` — moil's ``LoRA`` with ``LowRank(r_eq)``, ``r_eq = common.equal_size_rank``
  (stores as many parameters as one ``Hybrid(r)`` student);
* ``moil_k``, k = 1, 2, 4, 8 — ``MoIL`` with k ``Hybrid(r)`` students ``s0 … s{k-1}``,
  all with the one momentum ``HalfLife(100)``. They differ only in name, hence in the
  seed of their initialisation (``moil.recipes.student.student_seed``), so each is an
  independent student, but all imitate the **one shared momentum target** — what a user
  sweeping ranks or learning rates does. The slope of ``moil_k`` over k is therefore the
  cost of one more student (its imitation step and state), not of one more EMA.

Time: each size's six arms live in one process and are timed round-robin
(``common.interleaved``: wall and CPU time per step; "× full_ft" is the paired per-round
ratio of CPU times, steadier on a shared machine). Peak memory: each arm in a fresh
subprocess (hidden ``--memory-arm``), its peak above the model and batch loaded; they run
before the timing, while this process holds no model, vilt-l's one at a time (each holds a
340 M-parameter model), the others two at a time.

Growth in words, from the numbers: per token (tokens = batch × sequence length), per
student (the slope over k) and per target (that slope ÷ targets, and ÷ ``r·d_in·d_out``).

Usage: ``python benchmarks/scaling.py [--sizes tiny demo …] [--threads 1] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import torch

from moil.approx import Hybrid, LowRank
from moil.momentum import HalfLife
from moil.recipes import FullFineTune, LoRA, MoIL, Student, default_optimizer
from moil.solvers import ALSFit, FitOnly

KS = (1, 2, 4, 8)
#: FitOnly students (no imitation steps; set by their final ALS fit): the cheapest stored student.
FIT_KS = (1, 8)
ARMS = ("full_ft", "lora", *(f"moil_{k}" for k in KS), *(f"fit_only_{k}" for k in FIT_KS))
#: per size: (timed steps per arm per round, rounds, memory steps, memory subprocesses at once).
DEFAULTS = {
    "tiny": (3, 5, 2, 2),
    "demo": (2, 5, 2, 2),
    "vilt-b32": (1, 3, 2, 2),
    "vilt-l": (1, 1, 1, 1),
}
MIB = 2**20


def make_arm(setup: common.Setup, name: str):
    """A zero-argument callable doing one training step of arm ``name`` (see :data:`ARMS`)."""
    opt = default_optimizer(total_steps=100_000)
    r = setup.rank
    if name == "full_ft":
        recipe = FullFineTune(setup.task_loss, optimizer=opt)
    elif name == "lora":
        rank = common.equal_size_rank(setup.backbone, Hybrid(r))
        recipe = LoRA(setup.task_loss, LowRank(rank), optimizer=opt)
    elif name.startswith("fit_only_"):  # the same students, FitOnly: only the EMA per step
        k = int(name.removeprefix("fit_only_"))
        fit = dict(solver=FitOnly(), refit=ALSFit(), final_fit=True)
        students = {f"s{i}": Student(Hybrid(r), **fit) for i in range(k)}
        recipe = MoIL(setup.task_loss, students, momentum=HalfLife(100), optimizer=opt)
    elif name in ARMS:  # moil_k: k independent Hybrid(r) students, one momentum target
        k = int(name.removeprefix("moil_"))
        students = {f"s{i}": Student(Hybrid(r)) for i in range(k)}
        recipe = MoIL(setup.task_loss, students, momentum=HalfLife(100), optimizer=opt)
    else:
        raise ValueError(f"unknown arm {name!r}; choose from {ARMS}.")
    return common.recipe_step(recipe, setup)


def shape(setup: common.Setup) -> dict[str, int]:
    """Counts the growth is stated in: parameters, targets, ``Σ d_in·d_out`` over the
    targets, batch, sequence length (of the encoder's hidden states) and tokens."""
    with torch.inference_mode():
        out = setup.model(**setup.backbone.inputs(setup.batch), output_hidden_states=True)
    b, length = out.hidden_states[-1].shape[:2]
    base = setup.backbone.base()
    weights = [w for key, w in base.items() if key.endswith(".weight")]
    return {
        "params": sum(p.numel() for p in setup.model.parameters()),
        "targets": len(setup.backbone.targets),
        "target_weights": sum(w.numel() for w in weights),
        "target_bytes": sum(v.numel() * v.element_size() for v in base.values()),
        "hidden": setup.model.config.hidden_size,
        "batch": int(b),
        "sequence": int(length),
        "tokens": int(b * length),
    }


def slope(ks: tuple[int, ...], values: list[float]) -> float:
    """Least-squares slope of ``values`` over ``ks``: the cost of one more student."""
    return statistics.linear_regression(ks, values).slope


def memory_children(args: argparse.Namespace, size: str, steps: int, at_once: int) -> dict:
    """Peak memory of every arm, each in a fresh subprocess, ``at_once`` at a time."""
    child = common.child_argv(argparse.Namespace(**{**vars(args), "size": size}))
    child += ["--memory-steps", str(steps)]
    script, out = os.path.abspath(__file__), {}
    for i in range(0, len(ARMS), at_once):
        chunk = ARMS[i : i + at_once]
        out.update(common.run_children(script, {n: child + ["--memory-arm", n] for n in chunk}))
    return out


def measure(args: argparse.Namespace, size: str) -> dict:
    """Times (and unless ``--no-memory`` peak memory) of every arm on ``size``; prints its table."""
    steps, rounds, memory_steps, at_once = DEFAULTS[size]
    steps, rounds = common.steps_and_rounds(args, steps, rounds)
    memory_steps = args.memory_steps or memory_steps
    start = time.perf_counter()
    # Memory first, while this process holds no model: vilt-l's timed arms alone need ≈ 14 GB.
    memory = {} if args.no_memory else memory_children(args, size, memory_steps, at_once)
    setup = common.build(size, args.device, args.seed)
    counts = shape(setup)
    arms = {name: make_arm(setup, name) for name in ARMS}
    times = common.interleaved(arms, rounds=rounds, steps=steps, warmup=1, device=setup.device)
    lora_rank = common.equal_size_rank(setup.backbone, Hybrid(setup.rank))
    student_params = common.stored_params(setup.backbone, Hybrid(setup.rank))
    description, r = setup.description, setup.rank
    del arms, setup
    common._release_free_memory()  # gc + malloc_trim: hand the arms' heap back before the next size

    paired = {f"{n}/full_ft": common.paired_ratio(times, n, "full_ft", cpu=True) for n in ARMS}
    cpu = [times[f"moil_{k}"]["cpu_median"] for k in KS]
    wall = [times[f"moil_{k}"]["median"] for k in KS]
    t_ft = times["full_ft"]["cpu_median"]
    per_student = {
        "cpu_ms": 1e3 * slope(KS, cpu),
        "wall_ms": 1e3 * slope(KS, wall),
        "percent_of_full_ft": 100 * slope(KS, cpu) / t_ft,
    }
    fit_cpu = [times[f"fit_only_{k}"]["cpu_median"] for k in FIT_KS]
    per_fit_only = {"cpu_ms": 1e3 * slope(FIT_KS, fit_cpu), "percent_of_full_ft": 100 * slope(FIT_KS, fit_cpu) / t_ft}
    rows, memory_ratios = [], {}
    for name in ARMS:
        row = [
            name,
            1e3 * times[name]["median"],
            1e3 * times[name]["cpu_median"],
            paired[f"{name}/full_ft"],
        ]
        if memory:
            mib = memory[name]["peak_bytes"] / MIB
            memory_ratios[f"{name}/full_ft"] = mib / (memory["full_ft"]["peak_bytes"] / MIB)
            row += [mib, memory_ratios[f"{name}/full_ft"]]
        rows.append(row)
    headers = ["arm", "wall ms/step", "cpu ms/step", "× full_ft (cpu, paired)"]
    if memory:
        headers += ["peak Δ MiB", "mem × full_ft"]
        per_student["mib"] = slope(KS, [memory[f"moil_{k}"]["peak_bytes"] / MIB for k in KS])
    print(
        f"scaling {size} — {description}; {counts['tokens']} tokens "
        f"({counts['batch']} × {counts['sequence']}); Hybrid({r}) students, LoRA LowRank({lora_rank}); "
        f"{rounds} rounds × {steps} steps",
        flush=True,
    )
    print(common.table(headers, rows))
    mem = f", {per_student['mib']:+.1f} MiB" if memory else ""
    print(
        f"per extra student: {per_student['cpu_ms']:+.1f} ms cpu ({per_student['wall_ms']:+.1f} wall), "
        f"{per_student['percent_of_full_ft']:.1f} % of a full-FT step{mem}; per extra FitOnly student: "
        f"{per_fit_only['cpu_ms']:+.1f} ms cpu ({per_fit_only['percent_of_full_ft']:.1f} %); "
        f"{time.perf_counter() - start:.0f} s for this size\n",
        flush=True,
    )
    return {
        "model": description,
        **counts,
        "hybrid_rank": r,
        "lora_rank": lora_rank,
        "student_params": student_params,
        "steps": steps,
        "rounds": rounds,
        "memory_steps": memory_steps,
        "seconds_per_step": times,
        "peak_memory": memory,
        "ratios": paired,
        "memory_ratios": memory_ratios,
        "per_student": per_student,
        "per_fit_only_student": per_fit_only,
    }


def growth(results: dict[str, dict]) -> tuple[dict[str, dict], list[str]]:
    """Per token, per student and per target figures of every size, and sentences on them."""
    figures, sizes = {}, list(results)
    for size, res in results.items():
        t_ft = res["seconds_per_step"]["full_ft"]["cpu_median"]
        slope_s = res["per_student"]["cpu_ms"] / 1e3
        f = {
            "full_ft_us_per_token": 1e6 * t_ft / res["tokens"],
            "full_ft_ns_per_token_per_mparam": 1e9 * t_ft / res["tokens"] / (res["params"] / 1e6),
            "student_ms": 1e3 * slope_s,
            "student_percent": res["per_student"]["percent_of_full_ft"],
            "fit_only_ms": res["per_fit_only_student"]["cpu_ms"],
            "fit_only_percent": res["per_fit_only_student"]["percent_of_full_ft"],
            "student_ms_per_target": 1e3 * slope_s / res["targets"],
            "student_ns_per_r_d2": 1e9 * slope_s / (res["hybrid_rank"] * res["target_weights"]),
            "momentum_copy_mib": res["target_bytes"] / MIB,
            "student_state_mib": 3 * 4 * res["student_params"] / MIB,  # fp32 θ + AdamW m, v
            # the first student also brings the momentum target (its EMA): the intercept
            "momentum_ms": 1e3 * (res["seconds_per_step"]["moil_1"]["cpu_median"] - t_ft - slope_s),
        }
        if res["peak_memory"]:
            peak = {n: m["peak_bytes"] / MIB for n, m in res["peak_memory"].items()}
            f |= {
                "student_mib": res["per_student"]["mib"],
                "moil_1_minus_full_ft_mib": peak["moil_1"] - peak["full_ft"],
                "full_ft_kib_per_token": 1024 * peak["full_ft"] / res["tokens"],
            }
        figures[size] = f

    def each(key: str, fmt: str) -> str:
        return " / ".join(format(figures[s][key], fmt) for s in sizes if key in figures[s])

    names = " / ".join(sizes)
    words = [
        (
            f"Per token ({names}: {' / '.join(str(results[s]['tokens']) for s in sizes)} tokens "
            f"= batch × sequence): a full-FT step costs {each('full_ft_us_per_token', '.1f')} µs "
            f"per token, i.e. {each('full_ft_ns_per_token_per_mparam', '.3g')} ns per token per "
            "million parameters (a constant where the task step grows as tokens × parameters); "
            "the imitation never sees tokens, so its share of a step shrinks as the batch or "
            "sequence grows."
        ),
        f"Per student: each extra Hybrid student adds {each('student_ms', '.1f')} ms "
        f"({each('student_percent', '.1f')} % of a full-FT step)"
        + (
            f" and {each('student_mib', '.3g')} MiB of peak memory (its parameters with two "
            f"AdamW moments: {each('student_state_mib', '.3g')} MiB)"
            if all("student_mib" in figures[s] for s in sizes)
            else ""
        )
        + " (least-squares slope over k = 1, 2, 4, 8 students sharing one momentum target); "
        f"the intercept moil_1 − full_ft − slope (the shared target's EMA, plus the fit's "
        f"and the timing's error) is {each('momentum_ms', '.1f')} ms. A FitOnly student (no "
        f"imitation steps, set by its final ALS fit) adds {each('fit_only_ms', '.1f')} ms "
        f"({each('fit_only_percent', '.1f')} %; slope from k = 1 to 8).",
        f"Per target: that is {each('student_ms_per_target', '.3g')} ms per target per student, "
        f"{each('student_ns_per_r_d2', '.3g')} ns per r·d_in·d_out (the merge and its gradient "
        f"are O(r·d²) per target); one momentum copy of the targets is "
        f"{each('momentum_copy_mib', '.3g')} MiB"
        + (
            f", and MoIL with one student peaks {each('moil_1_minus_full_ft_mib', '.3g')} MiB "
            "above full FT (copy + student + transients)."
            if all("moil_1_minus_full_ft_mib" in figures[s] for s in sizes)
            else "."
        ),
    ]
    return figures, words


def summary(results: dict[str, dict]) -> str:
    """One row per size: the headline numbers of the growth."""
    rows = []
    for size, res in results.items():
        t = res["seconds_per_step"]
        row = [
            size,
            f"{res['params'] / 1e6:.3g} M",
            res["targets"],
            res["tokens"],
            1e3 * t["full_ft"]["cpu_median"],
            res["ratios"]["lora/full_ft"],
            res["ratios"]["moil_1/full_ft"],
            res["ratios"]["moil_8/full_ft"],
            res["per_student"]["cpu_ms"],
            res["per_student"]["percent_of_full_ft"],
            res["ratios"]["fit_only_8/full_ft"],
            res["per_fit_only_student"]["percent_of_full_ft"],
        ]
        if res["peak_memory"]:
            row += [res["peak_memory"]["full_ft"]["peak_bytes"] / MIB, res["per_student"]["mib"]]
        rows.append(row)
    headers = [
        "size", "params", "targets", "tokens", "full_ft cpu ms", "lora ×", "moil_1 ×",
        "moil_8 ×", "ms/student", "% of full_ft", "fit_only_8 ×", "% per FitOnly",
        "full_ft peak MiB", "MiB/student",
    ]
    return common.table(headers[: len(rows[0])], rows)


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0], steps_help="timed steps per arm per round", rounds=True)
    p.set_defaults(size=None)
    p.add_argument("--sizes", nargs="+", choices=common.SIZES, default=list(common.SIZES))
    p.add_argument("--memory-steps", type=int, default=None, help="steps per memory subprocess")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--memory-arm", default=None, help=argparse.SUPPRESS)
    args = common.parse(p, argv)
    sizes = [args.size] if args.size else args.sizes
    if args.memory_arm:  # child process: one arm, fresh
        setup = common.build(sizes[0], args.device, args.seed)
        steps = args.memory_steps or DEFAULTS[sizes[0]][2]
        common.measure_in_child(setup, lambda: make_arm(setup, args.memory_arm), steps)
        return {}
    results = {size: measure(args, size) for size in sizes}
    print("scaling — summary (cpu time; × = paired ratio to full_ft)")
    print(summary(results))
    figures, words = growth(results)
    print("\ngrowth in words:")
    for line in words:
        print("* " + line)
    out = {
        "sizes": sizes,
        "device": args.device,
        "machine": common.machine(),
        "results": results,
        "growth": figures,
        "growth_words": words,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
