"""What the ``moil`` command shows: rich progress bars and result tables.

Progress goes to stderr (the CLI's console); tables go to stdout, wide enough for a
file or a pipe (CI logs).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

__all__ = ["console", "print_run", "print_summary", "progress_reporter", "stdout"]

console = Console(stderr=True)


@contextmanager
def progress_reporter() -> Iterator[Callable[[str, int], Callable[[int, dict], None]]]:
    """Rich progress bars: one per run, with ETA and the live task loss."""
    bars = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console, transient=False,
    )

    def start(label: str, total: int) -> Callable[[int, dict], None]:
        task = bars.add_task(label, total=total, loss="…")

        def on_step(step: int, metrics: dict) -> None:
            bars.update(task, completed=step, loss=f"{metrics.get('task_loss', float('nan')):.4f}")

        return on_step

    with bars:
        yield start


def stdout() -> Console:
    # Wide enough for the table when stdout is a file or a pipe (CI logs).
    return Console(width=None if sys.stdout.isatty() else 150)


def print_summary(summary: list[dict]) -> None:
    table = Table(title="results (test split)")
    for col in ("task", "arm", "candidate", "test mean ± std", "stored params", "% model", "train s"):
        table.add_column(col)
    for row in summary:
        mean = "—" if row["test_mean"] is None else f"{row['test_mean']:.4f} ± {row['test_std']:.4f}"
        table.add_row(row["task"], row["arm"], row["candidate"] + (" *" if row["primary"] else ""), mean,
                      f"{row['stored_parameters']:,}", f"{row['percent_of_model']:.2f}", f"{row['train_seconds']:.0f}")
    stdout().print(table)


def print_run(result: dict) -> None:
    table = Table(title=f"{result['task']} · {result['arm']} · seed {result['seed']} ({result['metric']})")
    splits = [s for s in ("val", "test") if any(s in c for c in result["candidates"].values())]
    for col in ("candidate", *splits, "stored params"):
        table.add_column(col)
    for name, s in result["candidates"].items():
        table.add_row(name + (" *" if name == result["primary"] else ""),
                      *(f"{s[split][result['metric']]:.4f}" for split in splits), f"{s['stored_parameters']:,}")
    stdout().print(table)
