"""The stored-size curve at 2 400 steps, pooled over the digit-pairs grids that share one setup.

The 2 400-step grids (``convergence``, ``convergence-seeds``, ``convergence-peers``,
``convergence-sizes``, ``convergence-lora-r32``, ``convergence-r32-seeds``,
``convergence-peers-r32``, ``convergence-small-ranks``) train on the same data with the same
config, schedule, heads and momentum half-life; each holds some of the (method, rank, seed)
points. The grids in :data:`RECOMPUTED` ran on a second machine (an AMD EPYC with AVX2; the others
on an Intel Xeon with AVX-512), whose kernels give other last bits, from the pre-aligned start
recomputed there: cells from them are marked ``†``, no point pools seeds from both machines, and
the full-FT teacher's SVD students re-run there show how far the machine moves a point.
This script gathers every point's runs from the grid that holds each seed, pools them into one
curve per method (test accuracy mean ± std over the seeds at each stored size) and writes

* a markdown table (printed; ``benchmarks/pairs/README.md`` quotes it and a test compares),
* ``stored-size-2400.png``, drawn by :func:`moil.harness.plots.size_figure`,
* ``stored-size-2400.json``, every point with its per-seed scores, learning rates and runs.

The learning rate is each run's own: LoRA runs at 3e-3 at ranks 4 and 11 and at 1e-3 (its val
sweep's choice) at rank 32, DoRA at rank 32 (and at rank 4 on the second machine) and PiSSA at
rank 32 at their sweeps' choices. Points of the second machine are rows of their own: there the
same config moved the full-FT teacher's test score by −2.5 points, beyond the seed spread.

Usage: ``python benchmarks/pairs/stored_size.py [--out benchmarks/pairs]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from moil.harness.plots import size_figure
from moil.harness.size_curves import Curve

PAIRS = Path(__file__).resolve().parent
LORA, SEEDS_12, ALL = "student/student", (1, 2), (0, 1, 2)
SMALL = "convergence-small-ranks"
#: Grids run on the second machine, from its recomputed pre-aligned start (cells marked ``†``).
RECOMPUTED = frozenset({SMALL})
MARK = " †"

# method -> [(grid, arm, candidate, seeds)]; one entry per grid a point's seeds come from
POINTS: dict[str, list[tuple[str, str, str, tuple[int, ...]]]] = {
    "head-only": [("convergence", "head-only", "heads", (0,))],
    "LoRA": [
        ("convergence-sizes", "lora-r4", LORA, (0,)),
        ("convergence", "lora", LORA, (0,)), ("convergence-seeds", "lora", LORA, SEEDS_12),
        ("convergence-lora-r32", "lora-r32", LORA, (0,)), ("convergence-r32-seeds", "lora-r32", LORA, SEEDS_12),
    ],
    "DoRA (PEFT)": [
        ("convergence", "dora-peft", LORA, (0,)), ("convergence-peers", "dora-peft", LORA, SEEDS_12),
        ("convergence-peers-r32", "dora-r32", LORA, ALL),
    ],
    "PiSSA (PEFT)": [
        ("convergence", "pissa-peft", LORA, (0,)), ("convergence-peers", "pissa-peft", LORA, SEEDS_12),
        ("convergence-peers-r32", "pissa-r32", LORA, ALL),
    ],
    "truncated SVD of the full-FT teacher (FitOnly student)": [
        ("convergence-sizes", "moil", "student/svd-r2", (0,)),
        ("convergence-sizes", "moil", "student/svd-r4", (0,)),
        ("convergence", "moil", "student/svd-r11", (0,)), ("convergence-peers", "moil", "student/svd-r11", SEEDS_12),
        ("convergence-sizes", "moil", "student/svd-r32", (0,)),
        ("convergence-r32-seeds", "moil", "student/svd-r32", SEEDS_12),
    ],
    "TailDecay teacher's SVD (moil.recipes.TailDecay)": [
        ("convergence", "moil-shrink", "student/svd-r11", (0,)),
        ("convergence-seeds", "moil-shrink", "student/svd-r11", SEEDS_12),
        ("convergence-sizes", "moil-shrink-r32", "student/svd-r32", (0,)),
    ],
    "full fine-tuning of the targets": [
        ("convergence", "moil", "teacher", (0,)), ("convergence-peers", "moil", "teacher", SEEDS_12),
    ],
    "DoRA (PEFT), second machine": [(SMALL, "dora-r4", LORA, (0,))],
    "truncated SVD of the full-FT teacher, second machine": [
        (SMALL, "moil", f"student/svd-r{r}", (0,)) for r in (2, 4, 11, 32)
    ],
    "full fine-tuning of the targets, second machine": [(SMALL, "moil", "teacher", (0,))],
}
#: Methods with one size of their own (the last column), not a curve over sizes.
REFERENCES = frozenset({"full fine-tuning of the targets", "full fine-tuning of the targets, second machine"})


def gather(pairs: Path = PAIRS) -> dict[str, dict[int, dict[int, tuple[float, str, float]]]]:
    """``{method: {stored_parameters: {seed: (test accuracy, "grid/arm/candidate", lr)}}}``.

    Raises ``ValueError`` naming the grid when a listed run is missing or twice present, and
    naming the method when one point's seeds come from both machines (a spread over two machines
    is not a seed spread; see :data:`RECOMPUTED`).
    """
    grids: dict[str, list[dict]] = {}
    out: dict[str, dict[int, dict[int, tuple[float, str, float]]]] = {}
    for method, entries in POINTS.items():
        points = out.setdefault(method, {})
        for grid, arm, candidate, seeds in entries:
            if grid not in grids:
                path = pairs / grid / "results.json"
                if not path.is_file():
                    raise ValueError(f"stored_size: {path} is missing; run its grid "
                                     f"(moil ablate -c benchmarks/pairs/{grid}.toml -o benchmarks/pairs/{grid}).")
                grids[grid] = json.loads(path.read_text())["runs"]
            for seed in seeds:
                runs = [r for r in grids[grid] if r["arm"] == arm and r["seed"] == seed]
                if len(runs) != 1:
                    raise ValueError(f"stored_size: {grid} has {len(runs)} runs of arm {arm!r} seed {seed}, not 1.")
                score = runs[0]["candidates"][candidate]
                size = int(score["stored_parameters"])
                point = points.setdefault(size, {})
                if seed in point:
                    raise ValueError(f"stored_size: {method} at {size} has seed {seed} twice ({point[seed][1]}, {grid}).")
                point[seed] = (float(score["test"]["accuracy"]), f"{grid}/{arm}/{candidate}", float(runs[0]["lr"]))
    for method, points in out.items():
        for size, by_seed in points.items():
            starts = {run.split("/", 1)[0] in RECOMPUTED for _, run, _ in by_seed.values()}
            if len(starts) > 1:
                raise ValueError(f"stored_size: {method} at {size} pools seeds from two machines "
                                 f"({', '.join(sorted(r for _, r, _ in by_seed.values()))}); list them as two methods.")
    return out


def curves(gathered: dict[str, dict[int, dict[int, tuple[float, str, float]]]]) -> list[Curve]:
    """One :class:`Curve` per method: ``(size, mean, std, seeds)`` per stored size (std 0 for one seed)."""
    result = []
    for method, points in gathered.items():
        rows = []
        for size, by_seed in sorted(points.items()):
            scores = [by_seed[s][0] for s in sorted(by_seed)]
            std = statistics.stdev(scores) if len(scores) > 1 else 0.0
            rows.append((size, statistics.fmean(scores), std, len(scores)))
        result.append(Curve(method, tuple(rows), reference=method in REFERENCES))
    return result


def marks(gathered: dict[str, dict[int, dict[int, tuple[float, str, float]]]]) -> frozenset[tuple[str, int]]:
    """``{(method, size)}`` of the points with a seed from a :data:`RECOMPUTED` grid."""
    return frozenset((method, size) for method, points in gathered.items() for size, by_seed in points.items()
                     if any(run.split("/", 1)[0] in RECOMPUTED for _, run, _ in by_seed.values()))


def table(found: list[Curve], marked: frozenset[tuple[str, int]] = frozenset()) -> str:
    """Markdown: one row per method, one column per stored size, ``mean ± std (n)``; sizes
    within 5 % of the previous one share a column (DoRA's magnitude vectors add 1-2 %); the
    ``(method, size)`` cells in ``marked`` end in ``†``.

    Raises ``ValueError`` when one method has two sizes in one column, or head-only or a
    reference has other than one size.
    """
    sizes = sorted({p[0] for c in found if not c.reference and c.label != "head-only" for p in c.points})
    groups: list[list[int]] = []
    for size in sizes:  # chained: a column's sizes are each within 5 % of the one before
        if groups and size <= groups[-1][-1] * 1.05:
            groups[-1].append(size)
        else:
            groups.append([size])
    for c in found:
        shared = [g for g in groups if len({p[0] for p in c.points} & set(g)) > 1]
        if shared or ((c.reference or c.label == "head-only") and len(c.points) != 1):
            raise ValueError(f"stored_size: {c.label} has sizes {[p[0] for p in c.points]}, which do not fit "
                             f"one column each of {groups} (or, for a reference, one size).")
    head = "| method | " + " | ".join(" / ".join(_int(s) for s in g) for g in groups) + " | at its own size |"
    lines = [head, "| --- |" + " ---: |" * (len(groups) + 1)]
    for c in found:
        if c.reference or c.label == "head-only":  # one size of its own, named in its label
            (size, mean, std, n), = c.points
            mark = MARK if (c.label, size) in marked else ""
            lines.append(f"| {c.label} ({_int(size)}) |" + " — |" * len(groups) + f" {_cell(mean, std, n)}{mark} |")
            continue
        by_size = {p[0]: p for p in c.points}
        cells = [next((_cell(*by_size[s][1:]) + (MARK if (c.label, s) in marked else "") for s in g if s in by_size), "—")
                 for g in groups]
        lines.append(f"| {c.label} | " + " | ".join(cells) + " | — |")
    return "\n".join(lines)


def _int(n: int) -> str:
    return f"{n:,}".replace(",", " ")


def _cell(mean: float, std: float, n: int) -> str:
    return f"{mean:.4f} ± {std:.4f} ({n})" if n > 1 else f"{mean:.4f} (1)"


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=PAIRS, help="folder for stored-size-2400.png and .json")
    args = p.parse_args(argv)
    gathered = gather()
    found = curves(gathered)
    text = table(found, marks(gathered))
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    size_figure("nlvr2 at 2 400 steps", "accuracy", found).savefig(args.out / "stored-size-2400.png", dpi=110)
    (args.out / "stored-size-2400.json").write_text(json.dumps(
        {m: {str(size): {str(seed): {"test": v[0], "run": v[1], "lr": v[2]} for seed, v in sorted(by_seed.items())}
             for size, by_seed in sorted(points.items())} for m, points in gathered.items()}, indent=1) + "\n")
    return text


if __name__ == "__main__":
    main()
