"""The README's commands are the ones that work: CI runs exactly its test command, its
console script resolves, and its tour names modules that exist."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _tour() -> str:
    start = README.index("## A tour")
    return README[start: README.index("\n## ", start + 1)]


def test_ci_runs_the_readme_test_command():
    """``.ci/run`` ends with the README's test command, character for character."""
    readme = [line.strip() for line in README.splitlines() if "python -m pytest" in line]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    assert readme and ci[-1] == readme[0]


def test_console_script_resolves():
    """``moil = "module:function"`` in pyproject.toml names a function that exists, in the harness."""
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["moil"]
    module, _, function = target.partition(":")
    assert module.startswith("moil.harness.")
    assert callable(getattr(importlib.import_module(module), function))


def test_builtin_configs_ship_as_package_data():
    """The package data glob covers the built-in configs the README's ``moil demo`` reads."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    (package,) = [p for p in data if p.endswith(".configs")]
    folder = ROOT / Path(*package.split("."))
    assert sorted(p.name for p in folder.glob("*.toml")) == ["demo-quick.toml", "demo.toml"]
    assert f"`{folder.relative_to(ROOT).as_posix()}/demo.toml`" in README


def test_tour_names_modules_that_exist():
    """Every ``moil.x`` the README's tour table names is a module or package of the tree,
    and the table names the harness apart from the library."""
    names = sorted(set(re.findall(r"^\| `([^|]*?)` \|", _tour(), re.M)))
    modules = [m for cell in names for m in re.findall(r"moil(?:\.\w+)+", cell)]
    assert "moil.harness" in modules
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module


def test_readme_torchrun_lines_are_the_ones_the_distributed_tests_run():
    """Every ``torchrun`` line of the README is ``torchrun --standalone --nproc_per_node 2 -m
    moil.harness.cli train --config … --out … [--resume]`` — the command
    ``tests/test_distributed.py`` runs (as ``python -m torch.distributed.run``)."""
    lines = [line.strip() for line in README.splitlines() if line.strip().startswith("torchrun ")]
    assert len(lines) == 2
    form = re.compile(r"torchrun --standalone --nproc_per_node 2 -m moil\.harness\.cli train "
                      r"--config \S+ --out \S+( --resume)?")
    assert all(form.fullmatch(line) for line in lines), lines
    source = (ROOT / "tests" / "test_distributed.py").read_text()
    assert '"--standalone", "--nproc_per_node", "2"]' in source
    assert '"-m", "moil.harness.cli"], config, killed, "--resume")' in source
