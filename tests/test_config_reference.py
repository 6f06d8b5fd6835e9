"""The config schema in words: docs/config.md is what the schema generates, `moil config show`
prints a config that reads back as itself with one comment per field and only what applies,
`moil --version`, and every wrongly typed value refused in words that name the field."""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from importlib.metadata import version
from pathlib import Path

import attrs
import pytest
from typer.testing import CliRunner

from moil.harness.cli import app
from moil.harness.config import Config, ConfigError, loads_config, parse_config
from moil.harness.config_help import APPLIES, HELP
from moil.harness.config_reference import config_reference, sections, show_config

ROOT = Path(__file__).resolve().parents[1]
REGENERATE = "python -m moil.harness.config_reference > docs/config.md"

DISK = """
[model]
pretrained = "my-vilt"
family = "auto"
[data]
train = "digits/train"
val = "digits/val"
[train]
tasks = ["itm"]
seeds = [0]
[[arms]]
lr = {itm = [1e-3, 3e-3]}
[[arms.students]]
name = "als"
refit = "als"
refit_every = 5
[[arms.students]]
name = "low"
approx = "lowrank"
[[arms]]
name = "lora"
recipe = "lora"
rank = 4
[[arms]]
name = "full"
recipe = "full"
[[arms]]
name = "head"
recipe = "head"
"""


def test_docs_config_md_is_what_the_schema_generates():
    """docs/config.md cannot drift: it is byte for byte what the generator prints from the schema."""
    committed = (ROOT / "docs" / "config.md").read_text()
    assert committed == config_reference(), f"docs/config.md is stale: run `{REGENERATE}`"
    done = subprocess.run([sys.executable, "-m", "moil.harness.config_reference"], capture_output=True,
                          text=True, check=True, cwd=ROOT)
    assert done.stdout == committed


def test_every_field_has_one_meaning_and_every_rule_a_field():
    """HELP covers exactly the fields of every spec (no field without a meaning, no stale entry),
    and every APPLIES rule names a real field."""
    for table, cls in sections():
        names = {f.name for f in attrs.fields(cls)}
        assert set(HELP[cls.__name__]) == names, table
        assert set(APPLIES.get(cls.__name__, {})) <= names, table
        for f in attrs.fields(cls):
            assert f"| `{f.name}` |" in config_reference()


@pytest.mark.parametrize("text", ["", DISK, "[data]\nlimit = 40\n[model]\nfamily = 'tiny'\n[[arms]]\nmomentum = 0.9\n"])
def test_show_reads_back_as_the_same_config(text):
    """Law: loads_config(show_config(c)) == c when the fields that do not apply are defaults; every
    shown field (set or commented out) follows a `#` line giving its meaning."""
    config = loads_config(text)
    shown = show_config(config)
    assert loads_config(shown) == config
    lines = shown.splitlines()
    value = re.compile(r"^(\w+ = |# \w+ = \(unset\)$)")
    for i, line in enumerate(lines):
        if value.match(line):
            assert lines[i - 1].startswith("# ") and not value.match(lines[i - 1]), line
    assert sum(bool(value.match(line)) for line in lines) > 20


VALUE = re.compile(r"^(?:# )?(\w+) = ")


def _fields(block: str) -> set[str]:
    """The fields a block of ``show_config`` shows (set, or unset as ``# name = (unset)``) and its tables."""
    names = {m.group(1) for line in block.splitlines() if (m := VALUE.match(line)) and not line.startswith("# arm")}
    return names | {line.strip("[]").split(".")[-1] for line in block.splitlines() if line.startswith("[")}


def _arm_blocks(shown: str) -> dict[str, str]:
    return {block.split("'")[1]: block for block in shown.split("\n# arm ")[1:]}


def test_show_has_only_what_applies():
    """A LoRA arm shows no students or momentum, a full/head arm no rank; moil students show
    refit_every only with a refit, transform_rank only for a hybrid; data from disk hides the
    demo set's fields, the demo hides what only data from disk or a folder reads."""
    shown = show_config(loads_config(DISK))
    arms = _arm_blocks(shown)
    moil, *students = arms["moil"].split("\n[[arms.students]]")
    assert {"momentum", "head_lr_scale"} <= _fields(moil) and not {"rank", "approx", "scale"} & _fields(moil)
    assert {"rank", "approx", "scale"} <= _fields(arms["lora"])
    assert not {"students", "momentum"} & _fields(arms["lora"]) and "rank = 4" in arms["lora"]
    for name in ("full", "head"):
        assert not {"rank", "approx", "scale", "students", "momentum"} & _fields(arms[name])
    assert "head_lr_scale" in _fields(arms["full"]) and "head_lr_scale" not in _fields(arms["head"])
    als, low = students
    assert {"refit_every", "final_fit", "transform_rank", "side"} <= _fields(als) and "refit_every = 5" in als
    assert not {"refit_every", "final_fit", "transform_rank", "side"} & _fields(low)
    data = _fields(shown.split("[model]")[0])
    assert {"train", "val", "test", "epochs", "columns"} <= data and not {"dataset", "split_seed"} & data
    demo = show_config(Config())  # the switches to disk data and a folder show, unset; what they bring does not
    assert "# train = (unset)" in demo and "# pretrained = (unset)" in demo
    assert {"dataset", "split_seed"} <= _fields(demo)
    assert not {"val", "test", "columns", "epochs", "targets", "heads", "model_class", "outputs"} & _fields(demo)


def test_version_and_config_show_commands(tmp_path):
    """`moil --version` prints the installed version; `moil config show FILE` prints show_config;
    a bad file exits 2 naming the field and the choices, never 'unknown error'."""
    runner = CliRunner()
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"moil {version('moil')}"
    path = tmp_path / "run.toml"
    path.write_text(DISK)
    result = runner.invoke(app, ["config", "show", str(path)])
    assert result.exit_code == 0 and result.output == show_config(loads_config(DISK))
    assert runner.invoke(app, ["config", "show"]).output == show_config(Config())
    path.write_text("[model]\nfamily = 'vit'\n")
    result = runner.invoke(app, ["config", "show", str(path)])
    assert result.exit_code == 2
    assert "family = 'vit': use one of 'minilm-efficientnet', 'tiny', 'auto'" in result.output
    assert "unknown error" not in result.output


def _wrong_kind(tp) -> object:
    """A TOML value that is not of type ``tp``."""
    args = typing.get_args(tp)
    if type(None) in args and len(args) == 2:  # X | None: a wrong X
        tp = next(a for a in args if a is not type(None))
    if tp is str or typing.get_origin(tp) is typing.Literal:
        return 7
    if tp in (int, float):
        return "7"
    return 1 if tp is bool else True  # lists, tables, unions of numbers and strings


@pytest.mark.parametrize("table, cls", list(sections()), ids=[t for t, _ in sections()])
def test_every_wrongly_typed_field_is_refused_in_words(table, cls):
    """For every field of every table, a value of the wrong kind is refused with a message that
    starts with the field and its value and ends with its path — never cattrs' 'unknown error'
    or 'invalid value for type'."""
    for f in attrs.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        raw: dict = {}
        node = raw
        for part in table.split("."):
            node[part] = [{}] if part in ("arms", "students") else {}
            node = node[part][0] if isinstance(node[part], list) else node[part]
        node[f.name] = _wrong_kind(tp)
        with pytest.raises(ConfigError) as err:
            parse_config(raw)
        message = str(err.value)
        assert "unknown error" not in message and "invalid value for type" not in message, message
        line = rf"^  {f.name} = \S.*: \w.* @ \$\.\S*\b{f.name}$"
        assert re.search(line, message, re.MULTILINE), message
