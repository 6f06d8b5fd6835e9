"""results.json → report.md (the table) and PNG plots a person would rather look at.

Plots, per task: learning curves (training task loss per arm, mean over seeds),
each MoIL student's weight distance to its momentum target over training, and
the singular-value spectrum of the teacher's / target's update on one layer
against what the student captures, with the Eckart–Young floor marked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # a figure of its own: no pyplot state, no backend switch

__all__ = ["write_report", "table_markdown", "CANDIDATE_LABELS"]

CANDIDATE_LABELS = {"teacher": "teacher (= full fine-tuning)", "heads": "heads only"}


def _label(row: dict) -> str:
    name = row["candidate"]
    if name.startswith("target/"):
        return f"momentum target {name.split('/', 1)[1]}"
    return CANDIDATE_LABELS.get(name, name)


def _fmt(mean: float | None, std: float, n: int) -> str:
    if mean is None:
        return "—"
    return f"{mean:.4f} ± {std:.4f} (n={n})" if n > 1 else f"{mean:.4f}"


def table_markdown(summary: list[dict]) -> str:
    """The results table: one row per task × arm × candidate (a ``val`` column when
    the runs were scored on it)."""
    val = any(row["val_mean"] is not None for row in summary)
    lines = [
        "| task | arm | candidate | test (mean ± std) |" + (" val |" if val else "")
        + " lr | stored params | % of model | train s | RSS growth MiB |",
        "| --- | --- | --- | --- |" + (" --- |" if val else "") + " --- | ---: | ---: | ---: | ---: |",
    ]
    for row in summary:
        star = " **(stored)**" if row["primary"] else ""
        lines.append(
            f"| {row['task']} ({row['metric']}) | {row['arm']} | {_label(row)}{star} "
            f"| {_fmt(row['test_mean'], row['test_std'], row['seeds'])} "
            + (f"| {_fmt(row['val_mean'], 0.0, 1)} " if val else "")
            + f"| {row['lr']:g} "
            f"| {row['stored_parameters']:,} | {row['percent_of_model']:.2f} "
            f"| {row['train_seconds']:.0f} | {row['peak_memory_mib']:.0f} |"
        )
    return "\n".join(lines)


def _curves(out: Path, runs: list[dict], task: str) -> list[str]:
    """Training loss per arm and distance-to-target per MoIL student."""
    loss: dict[str, list[list[float]]] = {}
    distance: dict[str, list[list[float]]] = {}
    for run in runs:
        if run["task"] != task:
            continue
        rows = _metrics(out, run)
        if not rows:
            continue
        loss.setdefault(run["arm"], []).append([r["task_loss"] for r in rows])
        for key in rows[0]:
            if key.startswith("distance/"):
                distance.setdefault(f"{run['arm']} · {key.split('/', 1)[1]}", []).append([r[key] for r in rows])
    files = []
    for name, series, ylabel, log in (
        (f"curves-{task}.png", loss, "training task loss (EMA-smoothed)", False),
        (f"distance-{task}.png", distance, "‖W̄ − Ŵ‖_F (student to its target)", True),
    ):
        if not series:
            continue
        fig = Figure(figsize=(6.4, 4))
        ax = fig.subplots()
        for label, seeds in series.items():
            length = min(len(s) for s in seeds)
            mean = [sum(s[i] for s in seeds) / len(seeds) for i in range(length)]
            ax.plot(range(1, length + 1), _smooth(mean) if not log else mean, label=f"{label} (n={len(seeds)})")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.set_title(f"{task}: {'learning curves' if not log else 'imitation: distance to target'}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        files.append(name)
    return files


def _spectrum(out: Path, runs: list[dict], task: str) -> list[str]:
    for run in runs:
        if run["task"] != task or not run.get("imitation"):
            continue
        name, info = next(iter(run["imitation"].items()))
        fig = Figure(figsize=(6.4, 4))
        ax = fig.subplots()
        for key, label in (("spectrum_teacher", "teacher update W − W0"),
                           ("spectrum_target", "target update W̄ − W0"),
                           ("spectrum_student", f"student update Ŵ − W0 ({name})")):
            values = info[key]
            ax.semilogy(range(1, len(values) + 1), [max(v, 1e-12) for v in values], label=label)
        ax.axvline(info["rank"], color="gray", linestyle="--", label=f"student rank r = {info['rank']}")
        ax.set_xlabel("singular value index")
        ax.set_ylabel("singular value")
        ax.set_title(
            f"{task} · {run['arm']} · seed {run['seed']} · {'.'.join(info['probe_layer'].split('.')[-5:-1])}\n"
            f"all layers: distance {info['distance']:.4f} vs Eckart–Young floor {info['eckart_young_floor']:.4f}",
            fontsize=9,
        )
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        file = f"spectrum-{task}.png"
        fig.savefig(out / file, dpi=110)
        return [file]
    return []


def _metrics(out: Path, run: dict) -> list[dict]:
    path = out / run.get("folder", f"runs/{run['task']}/{run['arm']}/seed{run['seed']}") / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _smooth(values: list[float], alpha: float = 0.1) -> list[float]:
    out, current = [], values[0] if values else 0.0
    for v in values:
        current = (1 - alpha) * current + alpha * v
        out.append(current)
    return out


def _parallelism(machine: dict) -> str:
    workers = machine.get("workers", 1)
    threads = f"{machine['threads']} thread{'s' if machine['threads'] != 1 else ''}"
    return f"{workers} worker processes × {threads} each" if workers > 1 else threads


def write_report(results: dict[str, Any], out: str | Path) -> Path:
    """Write ``report.md`` and its plots next to ``results.json``; return the report path."""
    out = Path(out)
    tasks = sorted({r["task"] for r in results["runs"]})
    plots = []
    for task in tasks:
        plots += _curves(out, results["runs"], task) + _spectrum(out, results["runs"], task)
    lines = [
        "# moil report",
        "",
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
        table_markdown(results["summary"]),
        "",
    ]
    if results.get("sweeps"):
        lines += ["## Learning-rate sweeps (validation split, first seed)", ""]
        for s in results["sweeps"]:
            tried = ", ".join(f"{x['lr']:g}: {x['val']:.4f}" for x in s["scores"])
            lines.append(f"- {s['task']} · {s['arm']}: {tried} → **{s['chosen']:g}**")
        lines.append("")
    imitation = [(r, n, i) for r in results["runs"] for n, i in r.get("imitation", {}).items()]
    if imitation:
        lines += ["## Imitation: student vs its target", "",
                  "| task | arm | seed | student | rank | ‖W̄−Ŵ‖_F | Eckart–Young floor | uncovered ‖W̄−Ŵ‖²/‖W̄−W0‖² |",
                  "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
        for r, n, i in imitation:
            lines.append(f"| {r['task']} | {r['arm']} | {r['seed']} | {n} | {i['rank']} | {i['distance']:.4f} "
                         f"| {i['eckart_young_floor']:.4f} | {i['uncovered_fraction']:.3f} |")
        lines.append("")
    lines += [f"![{p}]({p})" for p in plots]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
