"""benchmarks/pairs/stored_size.py: the pooled 2 400-step stored-size curve is its grids' runs."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

PAIRS = Path(__file__).resolve().parents[1] / "benchmarks" / "pairs"


def _load():
    spec = importlib.util.spec_from_file_location("moil_pairs_stored_size", PAIRS / "stored_size.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stored_size = _load()


def test_the_pairs_readmes_pooled_table_is_the_scripts_output_of_the_committed_grids():
    """The README's pooled table (the markdown table under its heading) is exactly the table
    the script prints from the committed grids: no row more, none less, no digit different."""
    gathered = stored_size.gather()
    expected = stored_size.table(stored_size.curves(gathered), stored_size.marks(gathered))
    section = (PAIRS / "README.md").read_text().split("### The stored-size curve, pooled", 1)[1]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method |"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    assert "\n".join(lines[start:end]) == expected


def test_the_pooled_grids_share_data_model_and_training_but_seeds():
    """Pooling is valid only across one setup: every pooled grid's [data], [model] and [train]
    (bar the seeds) are the same."""
    import tomllib

    grids = sorted({grid for entries in stored_size.POINTS.values() for grid, *_ in entries})
    setups = {}
    for grid in grids:
        config = tomllib.loads((PAIRS / grid / "config.toml").read_text())
        config["train"].pop("seeds")
        setups[grid] = {k: config[k] for k in ("data", "model", "train")}
    first = setups[grids[0]]
    for grid in grids[1:]:
        assert setups[grid] == first, grid


@given(scores=st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=5))
def test_a_point_is_the_mean_and_sample_std_of_its_seeds(scores):
    """Law: a point's (mean, std, n) is (fmean, stdev, len) of its seeds' scores; std 0 for one seed."""
    gathered = {"m": {1000: {seed: (v, "g/a/c", 1e-3) for seed, v in enumerate(scores)}}}
    (curve,) = stored_size.curves(gathered)
    ((size, mean, std, n),) = curve.points
    assert (size, n) == (1000, len(scores))
    assert mean == pytest.approx(statistics.fmean(scores))
    assert std == (pytest.approx(statistics.stdev(scores)) if len(scores) > 1 else 0.0)


def _grid(folder: Path, runs: list[dict]) -> None:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"runs": runs}))


def _run(arm: str, seed: int, score: float, size: int = 10) -> dict:
    return {"arm": arm, "seed": seed, "lr": 1e-3,
            "candidates": {"c": {"stored_parameters": size, "test": {"accuracy": score}}}}


def test_missing_grids_runs_and_repeated_seeds_are_named(tmp_path, monkeypatch):
    """A missing results.json names the grid and the command that makes it; a missing run names
    the arm and seed; a seed listed by two grids is refused, not averaged twice."""
    monkeypatch.setattr(stored_size, "POINTS", {"m": [("g1", "a", "c", (0,)), ("g2", "a", "c", (1, 2))]})
    with pytest.raises(ValueError, match=r"g1/results.json is missing.*moil ablate -c benchmarks/pairs/g1.toml"):
        stored_size.gather(tmp_path)
    _grid(tmp_path / "g1", [_run("a", 0, 0.5)])
    _grid(tmp_path / "g2", [_run("a", 1, 0.6)])
    with pytest.raises(ValueError, match="g2 has 0 runs of arm 'a' seed 2"):
        stored_size.gather(tmp_path)
    (tmp_path / "g2" / "results.json").write_text(json.dumps({"runs": [_run("a", 1, 0.6), _run("a", 2, 0.7)]}))
    assert stored_size.gather(tmp_path) == {
        "m": {10: {0: (0.5, "g1/a/c", 1e-3), 1: (0.6, "g2/a/c", 1e-3), 2: (0.7, "g2/a/c", 1e-3)}}}
    monkeypatch.setattr(stored_size, "POINTS", {"m": [("g1", "a", "c", (0,)), ("g1", "a", "c", (0,))]})
    with pytest.raises(ValueError, match="seed 0 twice"):
        stored_size.gather(tmp_path)


def test_sizes_within_5_percent_chain_into_one_column_and_a_method_may_not_hold_two():
    """Columns chain sizes each within 5 % of the one before; a method with two sizes in one
    column (it would lose one) and a reference with two sizes are refused."""
    from moil.harness.size_curves import Curve

    one = lambda size: (size, 0.5, 0.0, 1)  # noqa: E731
    text = stored_size.table([Curve("a", (one(100), one(200))), Curve("b", (one(104), one(207)))])
    assert text.splitlines()[0] == "| method | 100 / 104 | 200 / 207 | at its own size |"
    with pytest.raises(ValueError, match="a has sizes \\[100, 104\\]"):
        stored_size.table([Curve("a", (one(100), one(104)))])
    with pytest.raises(ValueError, match="for a reference, one size"):
        stored_size.table([Curve("a", (one(100),)), Curve("ref", (one(5), one(9)), reference=True)])


def test_cells_from_a_recomputed_start_and_only_those_are_marked(tmp_path, monkeypatch):
    """Laws: a cell (a curve's or a reference's) ends in † exactly when its seeds come from a grid of
    RECOMPUTED (another machine and pre-aligned start); a point whose seeds come from both is
    refused, since a spread over two machines is not a seed spread."""
    monkeypatch.setattr(stored_size, "RECOMPUTED", frozenset({"new"}))
    monkeypatch.setattr(stored_size, "REFERENCES", frozenset({"ref"}))
    monkeypatch.setattr(stored_size, "POINTS", {"m": [("old", "a", "c", (0,)), ("new", "b", "c", (0, 1))],
                                                "ref": [("new", "a", "c", (1,))]})
    _grid(tmp_path / "old", [_run("a", 0, 0.5)])
    _grid(tmp_path / "new", [_run("a", 1, 0.7, size=30), _run("b", 0, 0.9, size=20), _run("b", 1, 0.8, size=20)])
    gathered = stored_size.gather(tmp_path)
    assert stored_size.marks(gathered) == {("m", 20), ("ref", 30)}
    lines = stored_size.table(stored_size.curves(gathered), stored_size.marks(gathered)).splitlines()
    assert lines[2:] == ["| m | 0.5000 (1) | 0.8500 ± 0.0707 (2) † | — |", "| ref (30) | — | — | 0.7000 (1) † |"]
    assert "†" not in stored_size.table(stored_size.curves(gathered))
    monkeypatch.setattr(stored_size, "POINTS", {"m": [("old", "a", "c", (0,)), ("new", "a", "c", (1,))]})
    (tmp_path / "new" / "results.json").write_text(json.dumps({"runs": [_run("a", 1, 0.7)]}))
    with pytest.raises(ValueError, match=r"m at 10 pools seeds from two machines"):
        stored_size.gather(tmp_path)
