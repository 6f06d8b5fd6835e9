"""``metrics.jsonl``: a run's per-step metrics, one JSON line per step, safe to resume."""

from __future__ import annotations

import json
from pathlib import Path

from moil.harness.run_folder import write_text

__all__ = ["MetricsLog", "read_rows"]


def read_rows(path: Path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (``[]`` when there is none), blank lines skipped."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLog:
    """``metrics.jsonl``: one JSON line per step, flushed as it goes.

    Resumed, it keeps the lines of steps before the first one trained again: steps
    logged after the last checkpoint (a run killed between checkpoints) are replayed,
    not doubled; a last line cut short by a kill is dropped on opening. Rewrites are
    atomic (:func:`moil.harness.run_folder.write_text`), so a kill during one loses nothing.
    """

    def __init__(self, path: Path, resume: bool) -> None:
        self.path, self._check = path, resume and path.exists()
        if self._check:
            self._drop_torn_tail()
        self._file = path.open("a" if self._check else "w")

    def _drop_torn_tail(self) -> None:
        # A kill mid-line leaves a last line without its newline: cut it before appending.
        text = self.path.read_text()
        if text and not text.endswith("\n"):
            write_text(self.path, text[: text.rfind("\n") + 1])

    def write(self, step: int, metrics: dict) -> None:
        if self._check:
            self._check = False
            self._drop_from(step)
        self._file.write(json.dumps({"step": step, **metrics}) + "\n")
        self._file.flush()

    def _drop_from(self, step: int) -> None:
        def before(line: str) -> bool:
            try:
                return json.loads(line)["step"] < step
            except (ValueError, KeyError, TypeError):
                return False  # a line cut short by a kill

        lines = self.path.read_text().splitlines()
        keep = [line for line in lines if before(line)]
        if len(keep) != len(lines):
            self._file.close()
            write_text(self.path, "".join(line + "\n" for line in keep))
            self._file = self.path.open("a")

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()
