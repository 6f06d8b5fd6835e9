"""moil.harness.config and .build: TOML ⇄ typed specs, readable errors, momentum specs,
the built-in configs."""

from __future__ import annotations

import pytest

from moil.harness.build import build_approx, parse_momentum
from moil.harness.cli import builtin_config
from moil.harness.config import Config, ConfigError, dump_config, load_config, loads_config, parse_config
from moil.momentum import Constant, CosineRamp, HalfLife, LinearWarmup


def test_defaults_round_trip():
    """Law: parse(dump(c)) == c — the resolved config saved with a run reloads exactly."""
    config = parse_config({"arms": [{"name": "a", "lr": [1e-4, 3e-4], "momentum": 0.99,
                                     "students": [{"name": "s", "momentum": "half-life:3", "lr": 1e-3}]}]})
    assert loads_config(dump_config(config)) == config
    assert loads_config(dump_config(Config())) == Config()


def test_errors_name_the_path_and_the_fix(tmp_path):
    """Every bad value is reported with its path; unknown keys are refused."""
    with pytest.raises(ConfigError) as err:
        parse_config({"train": {"steps": 0}, "arms": [{"rank": "x"}], "data": {"colour": 1}})
    message = str(err.value)
    assert "steps must be > 0" in message and "$.train" in message
    assert "$.arms[0].rank" in message
    assert "unknown field 'colour': this table's fields are dataset, train" in message and "@ $.data" in message
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="arm names must be unique"):
        parse_config({"arms": [{"name": "a"}, {"name": "a"}]})


@pytest.mark.parametrize("text, fragment", [
    ("[train]\nworkers = 2.5", "workers = 2.5: expected an integer (no decimal point, no quotes) @ $.train.workers"),
    ("[train]\nthreads = true", "threads = true: expected an integer (no decimal point, no quotes) @ $.train.threads"),
    ("[[arms]]\n[[arms.students]]\nfinal_fit = 1", "final_fit = 1: expected true or false @ $.arms[0].students[0].final_fit"),
    ("[train]\nseeds = [0, 0]", "seeds must be non-empty without repeats"),
    ("[train]\ntasks = []", "tasks must be non-empty without repeats"),
    ("[[arms]]\nlr = []", "lr lists must be non-empty without repeats"),
    ("[[arms]]\nlr = {itm = [1e-3, 1e-3]}", "lr lists must be non-empty without repeats"),
    ("[train]\neval_splits = []", "eval_splits must list"),
    ("[train]\ncheckpoint_every = -1", "checkpoint_every must be >= 0"),
    ("[[arms]]\nwarmup = 1.0", "warmup must be a fraction of the run in [0, 1), got warmup=1.0"),
    ("[[arms]]\nwarmup = 100", "warmup must be a fraction of the run in [0, 1), got warmup=100.0"),
    ("[[arms]]\nwarmup = -0.1", "warmup must be a fraction of the run in [0, 1)"),
])
def test_wrong_types_and_repeats_are_refused(text, fragment):
    """Numbers are not silently truncated (2.5 workers), booleans are not ints, lists
    that name runs (seeds, tasks, swept lrs) have no repeats (two runs would share a
    folder), and warm-up is a fraction of the run, never a step count."""
    with pytest.raises(ConfigError) as err:
        loads_config(text)
    assert fragment in str(err.value)


def test_momentum_specs():
    """Each short spec builds the schedule it names; nonsense is refused with the forms allowed."""
    assert parse_momentum(0.9, 10) == Constant(0.9)
    assert parse_momentum("constant:0.5", 10) == Constant(0.5)
    assert parse_momentum("none", 10) == Constant(0.0)
    assert parse_momentum("half-life:20", 10) == HalfLife(20.0)
    assert parse_momentum("cosine:0.9", 10) == CosineRamp(0.9, steps=10)
    assert parse_momentum("linear:0.9:0.99", 10) == LinearWarmup(0.9, 0.99, 10)
    with pytest.raises(ConfigError, match="half-life:20"):
        parse_momentum("fast", 10)
    with pytest.raises(ConfigError, match="momentum 'constant:1.5'"):
        parse_momentum("constant:1.5", 10)
    with pytest.raises(ConfigError, match="momentum 'half-life:x'"):
        parse_momentum("half-life:x", 10)  # a number that does not parse, not a raw ValueError
    with pytest.raises(ConfigError, match="approx"):
        build_approx("dora", 4)


def test_per_task_learning_rates():
    """An lr table gives each task its own value or sweep; it must cover every task."""
    config = loads_config('[train]\ntasks = ["itm", "vqa"]\n[[arms]]\nlr = {itm = 3e-4, vqa = [1e-3, 3e-3]}\n')
    arm = config.arms[0]
    assert arm.learning_rates("itm") == [3e-4] and arm.learning_rates("vqa") == [1e-3, 3e-3]
    assert loads_config(dump_config(config)) == config
    with pytest.raises(ConfigError, match=r"must give an lr for task\(s\) \[.vqa.\]"):
        loads_config('[train]\ntasks = ["itm", "vqa"]\n[[arms]]\nlr = {itm = 3e-4}\n')
    with pytest.raises(ConfigError, match="lr table keys must be tasks"):
        loads_config('[[arms]]\nlr = {nlvr = 3e-4}\n')


@pytest.mark.parametrize("name", ["demo", "demo-quick"])
def test_builtin_configs_parse(name):
    """The shipped demo configs are valid and every lr is a single value (sweeps were done)."""
    config = builtin_config(name)
    assert config.arms and all(len(a.learning_rates(t)) == 1 for a in config.arms for t in config.train.tasks)
