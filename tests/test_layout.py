"""The tree is the architecture: the library never imports the harness, and every module
stays small (STYLE.md: one concept per module, about 300 lines at most)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "moil"
HARNESS = PACKAGE / "harness"
MAX_LINES = 300
MODULES = sorted(PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module the source of ``module`` imports, anywhere in it, relative imports
    resolved; ``from a import b`` counts as importing ``a`` and ``a.b`` (``b`` may be a
    submodule)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _is_harness(module: str) -> bool:
    return module == "moil.harness" or module.startswith("moil.harness.")


def test_import_finder():
    """The finder sees absolute, relative, ``from moil import harness`` and nested imports."""
    source = (
        "import os\nfrom moil import harness\nfrom . import x\nfrom ..approx import LowRank\n"
        "def f():\n    import moil.harness.cli\n"
    )
    found = imported_modules(source, "moil.recipes.probe")
    assert {"os", "moil.harness", "moil.recipes.x", "moil.approx.LowRank", "moil.harness.cli"} <= found
    assert "moil.recipes.x" in imported_modules("from . import x", "moil.recipes", is_package=True)
    assert _is_harness("moil.harness") and _is_harness("moil.harness.cli")
    assert not _is_harness("moil.harnessy")


@pytest.mark.parametrize(
    "path", [p for p in MODULES if HARNESS not in p.parents], ids=lambda p: _module_name(p)
)
def test_library_never_imports_the_harness(path: Path):
    """No module outside ``moil/harness`` imports ``moil.harness`` (in any form, anywhere)."""
    found = imported_modules(path.read_text(), _module_name(path), path.name == "__init__.py")
    assert not sorted(m for m in found if _is_harness(m))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_no_module_exceeds_300_lines(path: Path):
    """Every module of ``moil/`` (harness included, nothing excluded) has at most 300 lines."""
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE.parent)} has {lines} lines (> {MAX_LINES})"
