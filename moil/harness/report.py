"""results.json → report.md (the table) and PNG plots a person would rather look at.

Plots, per task (drawn by :mod:`moil.harness.plots`): learning curves (training task loss
per arm, mean over seeds); each MoIL student's weight distance to its momentum target over
training, with the value after the final closed-form fit (the table's) and the LowRank
floors at the student's rank and at its stored size; the singular-value spectrum of the
teacher's / target's update on one layer against the student's, with the ranks that
explain it; each arm's validation curve and whether it is flat
(:mod:`moil.harness.convergence`, with ``train.eval_every``); the stored-size curve (test
metric against stored parameters, one line per method: :mod:`moil.harness.size_curves`),
drawn and tabled where a method has ≥ 2 sizes.
A report of runs too short to mean anything (:data:`MEANINGFUL_STEPS`) says so
at the top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moil.harness.convergence import run_metrics, validation_curves
from moil.harness.plots import (
    StudentDistance,
    distance_figure,
    loss_figure,
    size_figure,
    spectrum_figure,
    validation_figure,
)
from moil.harness.size_curves import has_curve, size_curves

__all__ = ["write_report", "table_markdown", "caveat", "candidate_label", "tail_decayed", "CANDIDATE_LABELS",
           "MEANINGFUL_STEPS"]

MEANINGFUL_STEPS = 50  # fewer training steps a run: a check that everything runs, not a comparison

CANDIDATE_LABELS = {"teacher": "teacher (= full fine-tuning)", "heads": "heads only"}


def _label(row: dict, decayed: dict[str, int] | None = None) -> str:
    return candidate_label(row["candidate"], (decayed or {}).get(row["arm"]))


def tail_decayed(results: dict) -> dict[str, int]:
    """``{arm: rank}`` of the arms whose teacher's update tail was decayed (``[arms.tail_decay]``)."""
    return {a["name"]: a["tail_decay"]["rank"] for a in results.get("config", {}).get("arms", []) if a.get("tail_decay")}


def candidate_label(name: str, decayed_rank: int | None = None) -> str:
    """How the report names a candidate (``teacher (= full fine-tuning)``, ``momentum target m0``);
    a teacher whose update's tail beyond rank ``decayed_rank`` was decayed says so."""
    if name == "teacher" and decayed_rank is not None:
        return f"teacher (full fine-tuning, tail beyond rank {decayed_rank} decayed)"
    if name.startswith("target/"):
        return f"momentum target {name.split('/', 1)[1]}"
    return CANDIDATE_LABELS.get(name, name)


def _fmt(mean: float | None, std: float, n: int) -> str:
    if mean is None:
        return "—"
    return f"{mean:.4f} ± {std:.4f} (n={n})" if n > 1 else f"{mean:.4f}"


def _per_seed(row: dict) -> str:
    """``seed: value`` for each seed's test score (older results.json files lack them: "—")."""
    by_seed = row.get("test_by_seed") or {}
    return ", ".join(f"{seed}: {value:.4f}" for seed, value in by_seed.items()) or "—"


def table_markdown(summary: list[dict], decayed: dict[str, int] | None = None) -> str:
    """The results table: one row per task × arm × candidate (a ``val`` column when
    the runs were scored on it); ``decayed``: :func:`tail_decayed`."""
    val = any(row["val_mean"] is not None for row in summary)
    lines = [
        "| task | arm | candidate | test (mean ± std) | test per seed |" + (" val |" if val else "")
        + " lr | stored params | % of model | train s | RSS growth MiB |",
        "| --- | --- | --- | --- | --- |" + (" --- |" if val else "") + " --- | ---: | ---: | ---: | ---: |",
    ]
    for row in summary:
        star = " **(stored)**" if row["primary"] else ""
        lines.append(
            f"| {row['task']} ({row['metric']}) | {row['arm']} | {_label(row, decayed)}{star} "
            f"| {_fmt(row['test_mean'], row['test_std'], row['seeds'])} | {_per_seed(row)} "
            + (f"| {_fmt(row['val_mean'], 0.0, 1)} " if val else "")
            + f"| {row['lr']:g} "
            f"| {row['stored_parameters']:,} | {row['percent_of_model']:.2f} "
            f"| {row['train_seconds']:.0f} | {row['peak_memory_mib']:.0f} |"
        )
    return "\n".join(lines)


def _student_config(config: dict, arm: str, student: str) -> dict:
    """The ``[[arms.students]]`` table of ``arm``'s ``student`` in the results' config ({} if absent)."""
    for a in config.get("arms", []):
        if a.get("name") == arm:
            return next((s for s in a.get("students", []) if s.get("name") == student), {})
    return {}


def _curves(out: Path, results: dict, task: str) -> list[str]:
    """Training loss per arm and distance-to-target per MoIL student."""
    loss: dict[str, list[list[float]]] = {}
    distance: dict[tuple[str, str], dict[str, list]] = {}
    for run in results["runs"]:
        if run["task"] != task:
            continue
        rows = run_metrics(out, run)
        if not rows:
            continue
        loss.setdefault(run["arm"], []).append([r["task_loss"] for r in rows])
        logged, imitation = [k.split("/", 1)[1] for k in rows[0] if k.startswith("distance/")], run.get("imitation", {})
        for student in logged + [s for s in imitation if s not in logged]:  # FitOnly: no curve, its final fit
            seen = distance.setdefault((run["arm"], student), {"curves": [], "infos": [], "steps": len(rows)})
            if student in logged:
                seen["curves"].append([r[f"distance/{student}"] for r in rows])
            if student in imitation:
                seen["infos"].append(imitation[student])
    students = []
    for (arm, student), seen in distance.items():
        infos, cfg = seen["infos"], _student_config(results.get("config", {}), arm, student)
        students.append(StudentDistance(
            label=f"{arm} · {student}", curves=seen["curves"], finals=[i["distance"] for i in infos],
            final_fit=cfg.get("refit") if cfg.get("final_fit") else None,
            rank=infos[0]["rank"] if infos else None, floors=[i["eckart_young_floor"] for i in infos],
            equal_size_rank=infos[0].get("equal_size_rank") if infos else None,
            equal_size_floors=[i["equal_size_floor"] for i in infos if "equal_size_floor" in i],
            steps=seen["steps"],
        ))
    files = []
    for name, fig in ((f"curves-{task}.png", loss_figure(task, loss) if loss else None),
                      (f"distance-{task}.png", distance_figure(task, students) if students else None)):
        if fig is not None:
            fig.savefig(out / name, dpi=110)
            files.append(name)
    return files


def _size_section(out: Path, results: dict, tasks: list[str]) -> list[str]:
    """The stored-size table (one row per point) and a ``size-<task>.png`` per task with a curve."""
    lines, files = [], []
    for task in tasks:
        curves = size_curves(results, task)
        if not has_curve(curves):
            continue
        metric = next(r["metric"] for r in results["summary"] if r["task"] == task)
        size_figure(task, metric, curves).savefig(out / f"size-{task}.png", dpi=110)
        files.append(f"size-{task}.png")
        lines += [f"| {task} ({metric}) | {c.label} | {arm} · {candidate} | {p[0]:,} | {_fmt(p[1], p[2], p[3])} |"
                  for c in curves for p, (arm, candidate) in zip(c.points, c.sources)]
    if not lines:
        return []
    return ["## Stored-size curve", "",
            ("Each method at its stored sizes (rows of the results table that differ only in rank); "
             "full fine-tuning is the reference level."), "",
            "| task | curve | arm · candidate | stored params | test (mean ± std) |",
            "| --- | --- | --- | ---: | --- |", *lines, "", *(f"![{f}]({f})" for f in files), ""]


def _convergence_section(out: Path, results: dict) -> list[str]:
    """The validation-curve table (every point, the rise over the last third, its verdict)
    and a ``val-<task>.png`` per task; ``[]`` when no run logged a curve (``train.eval_every``)."""
    curves, decayed = validation_curves(results, out), tail_decayed(results)
    if not curves:
        return []
    lines = ["## Convergence: validation curves", "",
             ("Each arm's trained model (a teacher where the recipe has one, else the stored candidate) scored "
              "on val every `train.eval_every` steps, mean over the seeds with a curve (n of the arm's runs); "
              "the last point is the run's own val score. *Rise* is the last point minus the best point in the "
              "first two thirds of the run. An arm is called flat when the rise is at most one standard error "
              "of a val score, √(p(1−p)/n) on n val rows: a heuristic threshold (the points share the val rows; "
              "the maximum over early points leans towards flat), not a test."), "",
             "| task | arm | model | n | val (step: mean over seeds) | rise over the last third | standard error | flat |",
             "| --- | --- | --- | ---: | --- | ---: | ---: | --- |"]
    for c in curves:
        points = ", ".join(f"{s}: {v:.4f}" for s, v in zip(c.steps, c.mean)) or "— (seeds end at other steps)"
        rise = "—" if c.rise is None else f"{c.rise:+.4f}"
        se = "—" if c.standard_error is None else f"{c.standard_error:.4f}"
        flat = {True: "yes", False: "**no**", None: "—"}[c.converged]
        lines.append(f"| {c.task} ({c.metric}) | {c.arm} | {candidate_label(c.candidate, decayed.get(c.arm))} | {len(c.seeds)}/{c.runs} "
                     f"| {points} | {rise} | {se} | {flat} |")
    files = []
    for task in sorted({c.task for c in curves}):
        mine = [c for c in curves if c.task == task and c.steps]
        if not mine:
            continue
        fig = validation_figure(task, mine[0].metric, [
            (f"{c.arm} · {candidate_label(c.candidate, decayed.get(c.arm))}", list(c.steps), {s: list(v) for s, v in c.seeds})
            for c in mine])
        fig.savefig(out / f"val-{task}.png", dpi=110)
        files.append(f"val-{task}.png")
    return [*lines, "", *(f"![{f}]({f})" for f in files), ""]


def _spectrum(out: Path, runs: list[dict], task: str) -> list[str]:
    for run in runs:
        if run["task"] != task or not run.get("imitation"):
            continue
        name, info = next(iter(run["imitation"].items()))
        layer = ".".join(info["probe_layer"].split(".")[-5:-1])
        fig = spectrum_figure(f"{task} · {run['arm']} · seed {run['seed']} · layer {layer}", name, info)
        file = f"spectrum-{task}.png"
        fig.savefig(out / file, dpi=110)
        return [file]
    return []


def caveat(results: dict[str, Any]) -> list[str]:
    """Lines for the top of the report when its runs are too short to compare methods
    (fewer than :data:`MEANINGFUL_STEPS` steps, as in ``moil demo --quick``); else ``[]``."""
    steps = max((r["steps"] for r in results["runs"] if "steps" in r), default=None)
    if steps is None or steps >= MEANINGFUL_STEPS:
        return []
    config = results.get("config", {})
    seeds, limit = len(config.get("train", {}).get("seeds", [])), config.get("data", {}).get("limit", 0)
    size = (f", {seeds} seed{'s' if seeds != 1 else ''}" if seeds else "") + (f", {limit} images a split" if limit else "")
    return [
        f"> **These numbers are not meaningful:** every run trained only {steps} steps{size} — too few steps "
        f"(fewer than {MEANINGFUL_STEPS}) for any arm to adapt. This report checks that everything runs "
        "(as `moil demo --quick` does); run `moil demo` to compare methods.",
        "",
    ]


def _parallelism(machine: dict) -> str:
    workers = machine.get("workers", 1)
    threads = f"{machine['threads']} thread{'s' if machine['threads'] != 1 else ''}"
    return f"{workers} worker processes × {threads} each" if workers > 1 else threads


def _imitation_table(imitation: list[tuple[dict, str, dict]]) -> list[str]:
    lines = ["## Imitation: student vs its target", "",
             "Distances are over every target tensor (weights and biases), as the distance plot's curve; "
             "for a student with a final fit they are the values *after* it (the plot's ★). The *rank-r "
             "LowRank floor* (Eckart–Young) is the closest any rank-r LoRA-like student gets; a Hybrid of "
             "rank r stores more (its transform) and can go below it. The *equal-size floor* is the "
             "LowRank floor at the rank whose stored size matches the student's.", "",
             "| task | arm | seed | student | rank r (+ r_t) | ‖W̄−Ŵ‖_F | rank-r LowRank floor (Eckart–Young) "
             "| equal-size LowRank floor (rank) | uncovered ‖W̄−Ŵ‖²/‖W̄−W0‖² |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r, n, i in imitation:
        ranks = f"{i['rank']} + {i['transform_rank']}" if i.get("transform_rank") else f"{i['rank']}"
        same = f"{i['equal_size_floor']:.4f} ({i['equal_size_rank']})" if "equal_size_floor" in i else "—"
        lines.append(f"| {r['task']} | {r['arm']} | {r['seed']} | {n} | {ranks} | {i['distance']:.4f} "
                     f"| {i['eckart_young_floor']:.4f} | {same} | {i['uncovered_fraction']:.3f} |")
    return lines + [""]


def write_report(results: dict[str, Any], out: str | Path) -> Path:
    """Write ``report.md`` and its plots next to ``results.json``; return the report path."""
    out = Path(out)
    tasks = sorted({r["task"] for r in results["runs"]})
    plots = []
    for task in tasks:
        plots += _curves(out, results, task) + _spectrum(out, results["runs"], task)
    lines = [
        "# moil report",
        "",
        *caveat(results),
        f"Model parameters: {results['runs'][0]['model_parameters']:,}. "
        f"Machine: {results['machine']['processor']}, {_parallelism(results['machine'])}, "
        f"torch {results['machine']['torch']}. Wall time: {results['wall_seconds']:.0f} s.",
        "",
        "Rows marked **(stored)** are what each arm keeps; the MoIL teacher is full fine-tuning "
        "of the targets (bitwise, same optimiser), reported for free by the MoIL run. "
        "*train s* is a whole run (a MoIL run trains all its students at once; with several "
        "workers, runs share the machine). *RSS growth* is "
        "how far the process's resident memory rose above its level at the start of the run (on "
        "CUDA: peak allocated); the allocator reuses freed memory, so compare peaks with "
        "`benchmarks/step_cost.py`, which measures each arm in a fresh process.",
        "",
        *([f"Arms with `[arms.tail_decay]` ({', '.join(tail_decayed(results))}) train a teacher whose update "
            "beyond the given rank decays as it trains (`moil.recipes.TailDecay`): their teacher is not "
            "plain full fine-tuning.", ""] if tail_decayed(results) else []),
        table_markdown(results["summary"], tail_decayed(results)),
        "",
        *_convergence_section(out, results),
        *_size_section(out, results, tasks),
    ]
    if results.get("sweeps"):
        lines += ["## Learning-rate sweeps (validation split, first seed)", ""]
        for s in results["sweeps"]:
            tried = ", ".join(f"{x['lr']:g}: {x['val']:.4f}" for x in s["scores"])
            lines.append(f"- {s['task']} · {s['arm']}: {tried} → **{s['chosen']:g}**")
        lines.append("")
    imitation = [(r, n, i) for r in results["runs"] for n, i in r.get("imitation", {}).items()]
    if imitation:
        lines += _imitation_table(imitation)
    lines += [f"![{p}]({p})" for p in plots]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
