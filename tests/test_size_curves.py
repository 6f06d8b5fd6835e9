"""The stored-size curve: which summary rows are one method, and the report's numbers.

Laws: :func:`size_curves` puts two rows on one curve exactly when they differ only in
size fields (an arm's ``name``/``rank``/``lr``; a student's ``name``/``rank``/
``transform_rank`` within its arm); each curve's points are sorted by stored size and
equal their summary rows; non-stored candidates (momentum targets, a non-MoIL arm's
other candidates) are on no curve; labels are unique. Every number report.md prints in
its results and stored-size tables equals, to the printed precision, its
``results.json`` value.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.backends.backend_agg import FigureCanvasAgg

from moil.harness.grid import summarize
from moil.harness.plots import size_figure
from moil.harness.report import CANDIDATE_LABELS, write_report
from moil.harness.size_curves import Curve, has_curve, size_curves


# -- grouping, as a law over random arms ----------------------------------------
def _row(arm: str, candidate: str, primary: bool, size: int, mean: float, std: float = 0.0, seeds: int = 1) -> dict:
    return {"task": "itm", "arm": arm, "candidate": candidate, "metric": "accuracy", "primary": primary,
            "test_mean": mean, "test_std": std, "seeds": seeds, "stored_parameters": size}


_methods = st.tuples(st.sampled_from(["lora", "peft-dora"]), st.sampled_from([1.0, 2.0]), st.sampled_from([0.0, 0.01]))
_baselines = st.lists(st.tuples(_methods, st.integers(1, 16), st.integers(0, 3)), min_size=1, max_size=6)
_student_methods = st.tuples(st.sampled_from(["hybrid", "lowrank"]), st.sampled_from(["none", "als"]), st.integers(1, 2))
_students = st.lists(st.tuples(_student_methods, st.integers(1, 16), st.integers(1, 4)), min_size=1, max_size=6)


def _results(baselines, students, means) -> dict:
    """Baseline arms (method = recipe, scale, weight_decay; size = rank; ignored: lr and
    the students a non-MoIL arm does not read) and one MoIL arm with ``students``."""
    arms, rows, runs = [], [], []
    for i, ((recipe, scale, decay), rank, junk) in enumerate(baselines):
        name = f"arm{i}"
        arms.append({"name": name, "recipe": recipe, "lr": [1e-3 * (junk + 1)], "scale": scale, "weight_decay": decay,
                     "rank": rank, "momentum": f"half-life:{junk + 5}", "students": [{"name": "hybrid", "rank": junk + 1}]})
        runs.append({"task": "itm", "arm": name, "recipe": recipe})
        rows.append(_row(name, "student/student", True, 100 * rank + 7 * (recipe == "peft-dora"), means.draw(st.floats(0, 1))))
        rows.append(_row(name, "merged", False, 5000, 0.5))  # not what the arm stores: on no curve
    specs = []
    for j, ((approx, refit, steps), rank, transform) in enumerate(students):
        spec = {"name": f"s{j}", "approx": approx, "rank": rank, "refit": refit, "solver_steps": steps}
        if approx == "hybrid":
            spec["transform_rank"] = transform
        specs.append(spec)
        rows.append(_row("moil", f"student/s{j}", j == 0, 90 * rank + 3 * transform * (approx == "hybrid"),
                         means.draw(st.floats(0, 1)), 0.01, 3))
    arms.append({"name": "moil", "recipe": "moil", "rank": 8, "students": specs})
    runs.append({"task": "itm", "arm": "moil", "recipe": "moil"})
    rows += [_row("moil", "teacher", False, 9000, 0.8), _row("moil", "target/m0", False, 9000, 0.79)]
    rows.append(_row("arm0", "student/student", True, 1, 0.5) | {"task": "vqa"})  # another task
    return {"config": {"arms": arms}, "runs": runs, "summary": rows}


@settings(max_examples=60, deadline=None)
@given(baselines=_baselines, students=_students, means=st.data())
def test_curves_group_exactly_the_rows_that_differ_in_size(baselines, students, means):
    results = _results(baselines, students, means)
    curves = size_curves(results, "itm")
    where = {source: c for c in curves for source in c.sources}
    method = {f"arm{i}": m for i, (m, _, _) in enumerate(baselines)}
    method |= {f"student/s{j}": ("moil", *m) for j, (m, _, _) in enumerate(students)}
    on_curves = {(r["arm"], r["candidate"]): r for r in results["summary"] if r["task"] == "itm"
                 and (r["arm"] == "moil" and r["candidate"].startswith("student/") or r["candidate"] == "student/student")}
    assert set(where) == set(on_curves) | {("moil", "teacher")}
    assert sum(len(c.sources) for c in curves) == len(where)  # each row on one curve once
    for a in on_curves:
        for b in on_curves:
            same = method[a[0] if a[0] != "moil" else a[1]] == method[b[0] if b[0] != "moil" else b[1]]
            assert (where[a] is where[b]) == same, (a, b)
    (teacher,) = [c for c in curves if c.reference]
    assert teacher.sources == (("moil", "teacher"),) and teacher.points == ((9000, 0.8, 0.0, 1),)
    for curve in curves:
        assert [p[0] for p in curve.points] == sorted(p[0] for p in curve.points)
        for point, source in zip(curve.points, curve.sources):
            row = on_curves.get(source) or {"stored_parameters": 9000, "test_mean": 0.8, "test_std": 0.0, "seeds": 1}
            assert point == (row["stored_parameters"], row["test_mean"], row["test_std"], row["seeds"])
    assert len({c.label for c in curves}) == len(curves)


@pytest.mark.parametrize(("arm", "recipe", "label"), [
    ({"approx": "lowrank"}, "lora", "LoRA (lowrank)"), ({}, "peft-dora", "DoRA (PEFT)"),
    ({}, "peft-pissa", "PiSSA (PEFT)"), ({}, "head", "head-only"), ({}, "full", "full fine-tuning"),
])
def test_baseline_labels_name_the_recipe(arm, recipe, label):
    results = {"config": {"arms": [{"name": "a", "recipe": recipe, "rank": 4, **arm}]},
               "runs": [{"task": "itm", "arm": "a", "recipe": recipe}],
               "summary": [_row("a", "x", True, 10, 0.5)]}
    (curve,) = size_curves(results, "itm")
    assert curve.label == label and curve.reference == (recipe == "full")


def test_student_labels_say_what_differs():
    students = [{"name": "a", "approx": "hybrid", "rank": 2, "refit": "als"},
                {"name": "b", "approx": "hybrid", "rank": 4, "refit": "als"},
                {"name": "c", "approx": "lowrank", "rank": 4, "refit": "svd", "momentum": "none"}]
    results = {"config": {"arms": [{"name": "moil", "recipe": "moil", "students": students}]},
               "runs": [{"task": "itm", "arm": "moil", "recipe": "moil"}],
               "summary": [_row("moil", "student/a", True, 20, 0.6), _row("moil", "student/b", False, 10, 0.7),
                           _row("moil", "student/c", False, 30, 0.65)]}
    hybrid, low = size_curves(results, "itm")
    assert hybrid.label == "moil · hybrid, refit als" and hybrid.points == ((10, 0.7, 0.0, 1), (20, 0.6, 0.0, 1))
    assert low.label == "moil · lowrank, refit svd, momentum none"
    assert has_curve([hybrid, low]) and not has_curve([low])


# -- the figure ---------------------------------------------------------------
def test_size_figure_draws_each_curve_on_a_log_axis_and_keeps_its_title():
    curves = [Curve("LoRA (lowrank)", ((100, 0.6, 0.02, 3), (400, 0.7, 0.01, 3))),
              Curve("head-only", ((50, 0.5, 0.0, 1),)),
              Curve("teacher (= full fine-tuning)", ((9000, 0.8, 0.0, 1),), reference=True)]
    fig = size_figure("itm " + "x" * 70, "accuracy", curves)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    data = [(list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines if line.get_linestyle() != "--"]
    assert ([100, 400], [0.6, 0.7]) in data and ([50], [0.5]) in data and ([9000], [0.8]) in data
    assert [line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == "--"] == [0.8]
    FigureCanvasAgg(fig).draw()
    renderer, box = fig.canvas.get_renderer(), fig.bbox
    extent = ax.title.get_window_extent(renderer)
    assert "stored-size curve" in ax.get_title()
    assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and extent.y1 <= box.y1, ax.get_title()
    for legend in fig.legends:
        extent = legend.get_window_extent(renderer)
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0


# -- the report's numbers are its results.json's -------------------------------
def _run(arm: str, recipe: str, seed: int, candidates: dict[str, tuple[float, int]], primary: str) -> dict:
    return {"task": "itm", "arm": arm, "recipe": recipe, "seed": seed, "lr": 3e-4 * (1 + seed % 2), "steps": 400,
            "primary": primary, "metric": "accuracy", "model_parameters": 1_234_567,
            "train_seconds": 12.5 + seed, "peak_memory_mib": 40.25 + 3 * seed, "imitation": {},
            "candidates": {name: {"test": {"accuracy": acc + 0.0123 * seed}, "val": {"accuracy": acc - 0.01},
                                  "stored_parameters": size} for name, (acc, size) in candidates.items()}}


@pytest.fixture
def results() -> dict:
    """Two LoRA arms (rank 2, rank 8), a MoIL arm with two Hybrid students of ranks 2
    and 6, a head-only arm; 3 seeds each (the head-only arm 1)."""
    lora = {"recipe": "lora", "approx": "lowrank", "scale": 1.0, "students": [{"name": "hybrid", "rank": 8}]}
    hybrid = {"approx": "hybrid", "refit": "als", "final_fit": True, "solver_steps": 1}
    arms = [{"name": "lora-r2", "rank": 2, "lr": [1e-3, 3e-3], **lora}, {"name": "lora-r8", "rank": 8, "lr": 1e-3, **lora},
            {"name": "moil", "recipe": "moil", "rank": 8, "lr": 3e-4, "momentum": "half-life:20",
             "students": [{"name": "hy2", "rank": 2, **hybrid}, {"name": "hy6", "rank": 6, **hybrid}]},
            {"name": "head-only", "recipe": "head", "lr": 3e-3}]
    runs = []
    for seed in range(3):
        runs += [_run("lora-r2", "lora", seed, {"student/student": (0.61234, 4_096)}, "student/student"),
                 _run("lora-r8", "lora", seed, {"student/student": (0.65877, 16_384)}, "student/student"),
                 _run("moil", "moil", seed, {"student/hy2": (0.63333, 4_210), "student/hy6": (0.70001, 12_402),
                                             "teacher": (0.72222, 1_000_000), "target/m0": (0.71111, 1_000_000)},
                      "student/hy2")]
    runs.append(_run("head-only", "head", 0, {"heads": (0.51, 1_000)}, "heads"))
    return {"config": {"arms": arms}, "machine": {"processor": "test cpu", "threads": 1, "torch": "2.x"},
            "wall_seconds": 99.0, "runs": runs, "summary": summarize(runs)}


def _tables(markdown: str) -> dict[str, list[dict[str, str]]]:
    """Every markdown table under its section heading: rows as ``{header: cell}``."""
    tables, heading, block = {}, "", []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            continue
        if block:
            tables[heading] = [dict(zip(block[0], row, strict=True)) for row in block[2:]]
            block = []
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
    return tables


def _same(printed: str, value: float) -> bool:
    """``printed`` is ``value`` to the precision printed (``1,234`` ``0.6123`` ``3e-05``)."""
    text = printed.replace(",", "")
    if "e" in text:
        return float(text) == pytest.approx(value, rel=5e-6)
    decimals = len(text.split(".")[1]) if "." in text else 0
    return abs(float(text) - value) <= 0.5 * 10**-decimals * (1 + 1e-9)


def _score(printed: str, mean: float | None, std: float, n: int) -> None:
    if mean is None:
        assert printed == "—"
        return
    match = re.fullmatch(r"(\S+) ± (\S+) \(n=(\d+)\)", printed) if n > 1 else re.fullmatch(r"(\S+)", printed)
    assert match, printed
    assert _same(match[1], mean), (printed, mean)
    if n > 1:
        assert _same(match[2], std) and int(match[3]) == n, (printed, std, n)


def _candidate(row: dict) -> str:
    name = row["candidate"]
    label = f"momentum target {name[7:]}" if name.startswith("target/") else CANDIDATE_LABELS.get(name, name)
    return label + (" **(stored)**" if row["primary"] else "")


RESULTS_COLUMNS = {  # header → check of the printed cell against its summary row
    "task": lambda cell, r: cell == f"{r['task']} ({r['metric']})",
    "arm": lambda cell, r: cell == r["arm"],
    "candidate": lambda cell, r: cell == _candidate(r),
    "test (mean ± std)": lambda cell, r: _score(cell, r["test_mean"], r["test_std"], r["seeds"]) is None,
    "test per seed": lambda cell, r: cell == ", ".join(f"{k}: {v:.4f}" for k, v in r["test_by_seed"].items())
    and all(_same(x.split(": ")[1], r["test_by_seed"][x.split(": ")[0]]) for x in cell.split(", ")),
    "val": lambda cell, r: _score(cell, r["val_mean"], 0.0, 1) is None,
    "lr": lambda cell, r: _same(cell, r["lr"]),
    "stored params": lambda cell, r: _same(cell, r["stored_parameters"]),
    "% of model": lambda cell, r: _same(cell, r["percent_of_model"]),
    "train s": lambda cell, r: _same(cell, r["train_seconds"]),
    "RSS growth MiB": lambda cell, r: _same(cell, r["peak_memory_mib"]),
}


def test_report_numbers_equal_its_results_json(results, tmp_path: Path):
    report = write_report(results, tmp_path).read_text()
    tables, summary = _tables(report), results["summary"]
    main = tables["moil report"]
    assert len(main) == len(summary) > 0
    for printed, row in zip(main, summary):
        assert set(printed) <= set(RESULTS_COLUMNS), set(printed) - set(RESULTS_COLUMNS)  # every column checked
        for header, cell in printed.items():
            assert RESULTS_COLUMNS[header](cell, row), (header, cell, row)
    rows = {(f"{r['task']} ({r['metric']})", f"{r['arm']} · {r['candidate']}"): r for r in summary}
    sized = tables["Stored-size curve"]
    curves = size_curves(results, "itm")
    assert len(sized) == sum(len(c.points) for c in curves) == 6  # 2 LoRA, 2 students, head-only, teacher
    for printed in sized:
        assert set(printed) == {"task", "curve", "arm · candidate", "stored params", "test (mean ± std)"}
        row = rows[printed["task"], printed["arm · candidate"]]
        assert _same(printed["stored params"], row["stored_parameters"]), (printed, row)
        _score(printed["test (mean ± std)"], row["test_mean"], row["test_std"], row["seeds"])
    by_curve = {}
    for printed in sized:
        by_curve.setdefault(printed["curve"], []).append(printed["arm · candidate"])
    assert by_curve["LoRA (lowrank)"] == ["lora-r2 · student/student", "lora-r8 · student/student"]
    assert by_curve["moil · hybrid, refit als"] == ["moil · student/hy2", "moil · student/hy6"]
    assert by_curve["teacher (= full fine-tuning)"] == ["moil · teacher"]
    assert (tmp_path / "size-itm.png").exists() and "![size-itm.png](size-itm.png)" in report


def test_no_size_curve_without_two_sizes(results, tmp_path: Path):
    one = [r for r in results["runs"] if r["arm"] in ("lora-r8", "head-only")]
    report = write_report(results | {"runs": one, "summary": summarize(one)}, tmp_path).read_text()
    assert "Stored-size curve" not in report and not (tmp_path / "size-itm.png").exists()
