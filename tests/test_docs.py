"""The documentation's examples run: every ```python block of docs/*.md and README.md.

Blocks of one file run in order in one fresh module namespace, so a later block may
use names an earlier one defined. Show code that must not run in a ```text block.
"""

from __future__ import annotations

import re
import sys
import traceback
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "docs").glob("*.md")) + [p for p in [ROOT / "README.md"] if p.is_file()]
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(first line number, source)`` of each fenced block whose info string starts with
    python/py."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        ticks, indent = m["ticks"], len(m["indent"])
        lang = (m["info"].split() or [""])[0].lower()
        body, j = [], i + 1
        while j < len(lines) and not re.match(
            rf"^[ \t]*{re.escape(ticks[0])}{{{len(ticks)},}}[ \t]*$", lines[j]
        ):
            line = lines[j]
            body.append(line[indent:] if line[:indent].strip() == "" else line.lstrip())
            j += 1
        if lang in ("python", "py"):
            blocks.append((i + 2, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def test_python_blocks_parser():
    """The parser finds python blocks (not text/bash ones), with their line numbers, and nested
    fences stay inside."""
    text = (
        "intro\n```python\ndef f():\n    return 1\n```\n"
        "```text\nno\n```\n````py\n```\ny = 2\n````\n"
    )
    assert python_blocks(text) == [(3, "def f():\n    return 1\n"), (10, "```\ny = 2\n")]
    assert python_blocks("- item\n  ```python\n  if x:\n      y()\n  ```\n") == [
        (3, "if x:\n    y()\n")
    ]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_examples_run(path: Path):
    """Each ```python block of the file runs without error, in order, in one namespace."""
    blocks = python_blocks(path.read_text(encoding="utf-8"))
    name = f"_moil_doc_{path.stem.replace('-', '_')}"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module  # attrs/dataclasses/pickling look classes' modules up here
    try:
        for number, (line, source) in enumerate(blocks, start=1):
            try:
                code = compile(source, f"{path.name}[block {number}, line {line}]", "exec")
                exec(code, module.__dict__)  # noqa: S102 — running the docs is the test
            except Exception:  # noqa: BLE001 — any error fails the block
                pytest.fail(
                    f"{path.relative_to(ROOT)}: python block {number} (line {line}) failed:\n"
                    f"{traceback.format_exc()}",
                    pytrace=False,
                )
    finally:
        sys.modules.pop(name, None)
