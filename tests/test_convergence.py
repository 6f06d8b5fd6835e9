"""Validation curves (train.eval_every): logged, read back, tabled and judged flat or not."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from moil.harness.config import parse_config
from moil.harness.convergence import ArmCurve, run_curve, run_metrics, validation_curves
from moil.harness.grid import run_grid


def small() -> dict:
    return {
        "data": {"limit": 40},
        "model": {"family": "tiny"},
        "train": {"steps": 5, "seeds": [0, 1], "tasks": ["itm"], "threads": 1, "eval_every": 2},
        "arms": [
            {"name": "lora", "recipe": "lora", "approx": "lowrank", "rank": 2, "lr": 1e-2},
            {"name": "moil", "recipe": "moil", "lr": 1e-2, "momentum": "half-life:2",
             "students": [{"name": "s", "approx": "hybrid", "rank": 2, "refit": "als", "final_fit": True}]},
        ],
    }


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("curves")
    return run_grid(parse_config(small()), out), out


@pytest.mark.slow
def test_each_run_logs_its_trained_models_val_score_every_k_steps(grid):
    """5 steps, eval_every 2: steps 2 and 4 carry ``val/<candidate>/accuracy`` (the MoIL run's
    teacher, the LoRA run's stored ``student/student``); the curve read back ends with the run's own
    val score at step 5, and a point equals the candidate scored on val (its model did not change)."""
    results, out = grid
    for run in results["runs"]:
        candidate = "teacher" if run["arm"] == "moil" else run["primary"]
        key = f"val/{candidate}/accuracy"
        rows = run_metrics(out, run)
        assert [r["step"] for r in rows if key in r] == [2, 4]
        assert all("task_loss" in r for r in rows)
        assert run["curve"]["candidate"] == candidate and run["curve"]["every"] == 2
        assert run["curve"]["val_rows"] == 80 and run["curve"]["seconds"] > 0  # 40 images, a match + a mismatch each
        read, points = run_curve(out, run)
        assert read == candidate and sorted(points) == [2, 4, 5]
        assert points[5] == run["candidates"][candidate]["val"]["accuracy"]
        logged = {r["step"]: r[key] for r in rows if key in r}
        assert run["curve"]["points"] == {str(s): v for s, v in logged.items()}  # results.json alone suffices
        (out / run["folder"] / "metrics.jsonl").rename(out / run["folder"] / "metrics.moved")
        assert run_curve(out, run) == (read, points)
        (out / run["folder"] / "metrics.moved").rename(out / run["folder"] / "metrics.jsonl")


@pytest.mark.slow
def test_the_reports_convergence_table_is_the_logged_curves(grid):
    """Every number of the report's convergence rows is the mean over seeds of the logged points."""
    results, out = grid
    report = (out / "report.md").read_text()
    assert "## Convergence: validation curves" in report and (out / "val-itm.png").exists()
    curves = validation_curves(results, out)
    assert {c.arm for c in curves} == {"lora", "moil"}
    for c in curves:
        assert c.steps == (2, 4, 5) and {seed for seed, _ in c.seeds} == {0, 1} and c.runs == 2
        for i, step in enumerate(c.steps[:-1]):
            logged = []
            for run in results["runs"]:
                if run["arm"] == c.arm:
                    rows = [json.loads(x) for x in (out / run["folder"] / "metrics.jsonl").read_text().splitlines()]
                    logged.append(next(r[f"val/{c.candidate}/accuracy"] for r in rows if r["step"] == step
                                       and f"val/{c.candidate}/accuracy" in r))
            assert c.mean[i] == pytest.approx(sum(logged) / len(logged), abs=0)
        section = report.split("## Convergence: validation curves", 1)[1]
        row = next(line for line in section.splitlines() if line.startswith(f"| itm (accuracy) | {c.arm} |"))
        assert ", ".join(f"{s}: {v:.4f}" for s, v in zip(c.steps, c.mean)) in row
        assert f"{c.rise:+.4f}" in row and f"{c.standard_error:.4f}" in row and "| 2/2 |" in row


values = st.floats(0.0, 1.0, allow_nan=False)


def curve(points, rows=1000, seeds=1):
    steps = tuple(10 * (i + 1) for i in range(len(points)))
    return ArmCurve("itm", "a", "teacher", "accuracy", steps, tuple((s, tuple(points)) for s in range(seeds)),
                    rows, seeds)


@given(st.lists(values, min_size=3, max_size=12), st.integers(1, 5000))
def test_rise_is_the_last_point_over_the_best_of_the_first_two_thirds(points, rows):
    """Law: rise = v̄(T) − max_{t ≤ 2T/3} v̄(t); flat ⇔ rise ≤ √(v̄(T)(1 − v̄(T))/n)."""
    c = curve(points, rows)
    early = [v for s, v in zip(c.steps, points) if s <= 2 * c.steps[-1] / 3]
    assert c.rise == points[-1] - max(early)
    assert c.standard_error == pytest.approx(math.sqrt(points[-1] * (1 - points[-1]) / rows))
    assert c.converged == (c.rise <= c.standard_error)


@given(values, st.integers(3, 10), st.integers(1, 5))
def test_a_constant_curve_is_flat(level, length, seeds):
    """Law: a curve that never moves has rise 0 ≤ se: flat, whatever its level and seeds."""
    c = curve([level] * length, seeds=seeds)
    assert c.rise == 0.0 and c.converged is True and c.mean == pytest.approx((level,) * length)


@given(st.lists(values, min_size=3, max_size=8), st.floats(0.02, 0.5))
def test_a_curve_still_climbing_by_more_than_its_noise_is_not_flat(points, climb):
    """Law: lifting only the last point by more than the largest possible standard error
    (1/(2√n) at p = ½) above every earlier point makes the arm not converged."""
    rows = 10_000  # se ≤ 0.005 < climb
    top = max(points[:-1])
    assume(top + climb <= 1.0)
    c = curve([*points[:-1], top + climb], rows, seeds=2)
    assert c.converged is False


def test_curves_read_back_names_with_slashes_a_missing_seed_and_the_runs_last_step(tmp_path):
    """Read from metrics.jsonl alone (results without a recorded candidate): a ``student/student``
    curve, steps 3 and 6 of a 7-step run plus its val score at 7; a third seed without a curve
    leaves the arm without a verdict (n = 2 of 3), and seeds ending at other steps have no common curve."""
    runs = []
    for seed, logged in ((0, {3: 0.5, 6: 0.7}), (1, {3: 0.6, 6: 0.8}), (2, None)):
        folder = tmp_path / f"runs/itm/lora/seed{seed}"
        folder.mkdir(parents=True)
        lines = [{"step": s, "task_loss": 0.1, **({"val/student/student/accuracy": logged[s]}
                                                  if logged and s in logged else {})} for s in range(1, 8)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        runs.append({"task": "itm", "arm": "lora", "seed": seed, "steps": 7, "metric": "accuracy",
                     "folder": f"runs/itm/lora/seed{seed}",
                     "candidates": {"student/student": {"val": {"accuracy": 0.75 + seed / 100}}}})
    (c,) = validation_curves({"runs": runs}, tmp_path)
    assert (c.candidate, c.steps, c.runs, len(c.seeds)) == ("student/student", (3, 6, 7), 3, 2)
    assert c.mean == pytest.approx((0.55, 0.75, 0.755))
    assert c.converged is None and not c.complete
    (c2,) = validation_curves({"runs": runs[:2]}, tmp_path)
    assert c2.complete and c2.rise == pytest.approx(0.755 - 0.55)
    runs[1] = {**runs[1], "steps": 6}
    (c3,) = validation_curves({"runs": runs[:2]}, tmp_path)
    assert c3.steps == () and c3.rise is None and c3.converged is None


@pytest.mark.parametrize("grid", ["comparison", "tail-decay", "tail-decay-shrink", "vqa", "convergence", "convergence-seeds",
                                  "convergence-peers", "convergence-sizes", "convergence-lora-r32",
                                  "convergence-r32-seeds", "convergence-peers-r32", "convergence-small-ranks"])
def test_the_committed_reports_convergence_rows_are_their_runs_curves(grid):
    """benchmarks/pairs/<grid>/report.md: each convergence row is what its committed
    results.json and curve logs give (every point, the rise, the standard error, n)."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks" / "pairs" / grid
    results = json.loads((folder / "results.json").read_text())
    curves = validation_curves(results, folder)
    assert curves and all(c.complete for c in curves)
    section = (folder / "report.md").read_text().split("## Convergence: validation curves", 1)[1]
    for c in curves:
        row = next(line for line in section.splitlines() if line.startswith(f"| {c.task} ({c.metric}) | {c.arm} |"))
        assert ", ".join(f"{s}: {v:.4f}" for s, v in zip(c.steps, c.mean)) in row
        assert f"| {c.rise:+.4f} | {c.standard_error:.4f} |" in row and f"| {len(c.seeds)}/{c.runs} |" in row


def test_the_pairs_readmes_longer_run_table_is_the_convergence_grid():
    """benchmarks/pairs/README.md's 2 400-step table: each arm's test score and val rise are
    the committed convergence grid's (results.json), to the printed digits."""
    from pathlib import Path

    pairs = Path(__file__).resolve().parents[1] / "benchmarks" / "pairs"
    folder = pairs / "convergence"
    results = json.loads((folder / "results.json").read_text())
    table = (pairs / "README.md").read_text().split("## Four times longer", 1)[1].split("\n\n- ", 1)[0]
    rises = {c.arm: c.rise for c in validation_curves(results, folder)}
    labels = {"head-only": "head-only", "lora": "LoRA r = 11", "dora-peft": "DoRA r = 11", "pissa-peft": "PiSSA r = 11"}
    by_arm = {r["arm"]: r for r in results["runs"]}
    for arm, label in labels.items():
        run = by_arm[arm]
        row = next(line for line in table.splitlines() if line.startswith(f"| {label} ("))
        assert row.endswith(f"| {run['candidates'][run['primary']]['test']['accuracy']:.4f} | {100 * rises[arm]:+.1f} |"), row
    moil, decayed = by_arm["moil"]["candidates"], by_arm["moil-shrink"]["candidates"]
    for label, score in (("MoIL, moil's recipe", moil["student/hybrid-k4+als"]), ("truncated SVD", moil["student/svd-r11"]),
                         ("TailDecay", decayed["student/svd-r11"]), ("full fine-tuning", moil["teacher"])):
        row = next(line for line in table.splitlines() if line.startswith(f"| {label}"))
        assert f"| {score['test']['accuracy']:.4f} |" in row, row


def test_the_pairs_readmes_three_seed_longer_run_table_is_its_three_grids():
    """The 3-seed 2 400-step table: seed 0 from the convergence grid, seeds 1-2 from
    convergence-seeds (TailDecay, LoRA) and convergence-peers (full FT, DoRA, PiSSA); each
    per-seed value and mean ± std is theirs, to the printed digits."""
    import statistics
    from pathlib import Path

    pairs = Path(__file__).resolve().parents[1] / "benchmarks" / "pairs"
    runs = [r for grid in ("convergence", "convergence-seeds", "convergence-peers")
            for r in json.loads((pairs / grid / "results.json").read_text())["runs"]]
    table = (pairs / "README.md").read_text().split("**Seeds 1 and 2 of every arm**", 1)[1].split("\n\n- ", 1)[0]
    rows = (("lora", "student/student", "LoRA r = 11"), ("dora-peft", "student/student", "DoRA r = 11"),
            ("pissa-peft", "student/student", "PiSSA r = 11"), ("moil", "student/svd-r11", "truncated SVD"),
            ("moil-shrink", "student/svd-r11", "TailDecay teacher's rank-11 SVD"),
            ("moil-shrink", "teacher", "the TailDecay teacher itself"),
            ("moil", "target/m0", "momentum target"), ("moil", "teacher", "full fine-tuning"))
    for arm, candidate, label in rows:
        scores = [r["candidates"][candidate]["test"]["accuracy"] for r in sorted(
            (r for r in runs if r["arm"] == arm), key=lambda r: r["seed"])]
        assert len(scores) == 3, (arm, scores)
        row = next(line for line in table.splitlines() if line.startswith(f"| {label}"))
        expected = (f"| {statistics.mean(scores):.4f} ± {statistics.stdev(scores):.4f} | "
                    + " / ".join(f"{v:.4f}" for v in scores) + " |")
        assert row.endswith(expected), (row, expected)


def test_the_pairs_readmes_stored_size_table_at_2400_steps_is_its_grids():
    """The 2 400-step stored-size table: every score is its grid's seed-0 test accuracy (rank 11
    from convergence, LoRA r = 32 from its own-rate grid, the rest from convergence-sizes), to
    the printed digits, and each row's stored size is the runs' own."""
    from pathlib import Path

    pairs = Path(__file__).resolve().parents[1] / "benchmarks" / "pairs"
    runs = {(grid, r["arm"]): r for grid in ("convergence", "convergence-sizes", "convergence-lora-r32")
            for r in json.loads((pairs / grid / "results.json").read_text())["runs"] if r["seed"] == 0}
    section = (pairs / "README.md").read_text().split("### The stored-size curve at 2 400 steps", 1)[1]
    table = section.split("Test accuracy:\n\n", 1)[1].split("\n\n", 1)[0]
    rows = {line.split("|")[1].strip(): [c.strip().strip("*") for c in line.split("|")[2:5]]
            for line in table.splitlines() if line.startswith("| ") and "(r = " in line}
    cells = {  # (row, column): (grid, arm, candidate); columns: LoRA, SVD of full FT, TailDecay's SVD
        ("r = 2", 1): ("convergence-sizes", "moil", "student/svd-r2"),
        ("r = 4", 0): ("convergence-sizes", "lora-r4", "student/student"),
        ("r = 4", 1): ("convergence-sizes", "moil", "student/svd-r4"),
        ("r = 11", 0): ("convergence", "lora", "student/student"),
        ("r = 11", 1): ("convergence", "moil", "student/svd-r11"),
        ("r = 11", 2): ("convergence", "moil-shrink", "student/svd-r11"),
        ("r = 32", 0): ("convergence-lora-r32", "lora-r32", "student/student"),
        ("r = 32", 1): ("convergence-sizes", "moil", "student/svd-r32"),
        ("r = 32", 2): ("convergence-sizes", "moil-shrink-r32", "student/svd-r32"),
    }
    assert len(rows) == 4
    for (rank, column), (grid, arm, candidate) in cells.items():
        (label, values), = ((k, v) for k, v in rows.items() if k.endswith(f"({rank})"))
        score = runs[grid, arm]["candidates"][candidate]
        assert values[column] == f"{score['test']['accuracy']:.4f}", (rank, column, values)
        assert label.split(" (")[0].replace(" ", "") == str(score["stored_parameters"]), (label, score["stored_parameters"])


def test_the_pairs_readmes_rank_32_three_seed_table_is_its_grids():
    """The rank-32 3-seed table: seed 0 from the stored-size grids, seeds 1-2 from
    convergence-r32-seeds, DoRA and PiSSA from convergence-peers-r32; each per-seed value,
    mean ± std and stored size is theirs, to the printed digits."""
    import statistics
    from pathlib import Path

    pairs = Path(__file__).resolve().parents[1] / "benchmarks" / "pairs"
    runs = {grid: json.loads((pairs / grid / "results.json").read_text())["runs"]
            for grid in ("convergence-sizes", "convergence-lora-r32", "convergence-r32-seeds", "convergence-peers-r32")}
    table = (pairs / "README.md").read_text().split("### Rank 32 over 3 seeds", 1)[1].split("\n\n- ", 1)[0]
    rows = (  # (label, candidate, [(grid, arm, seeds)])
        ("LoRA r = 32", "student/student", [("convergence-lora-r32", "lora-r32", {0}), ("convergence-r32-seeds", "lora-r32", {1, 2})]),
        ("DoRA r = 32", "student/student", [("convergence-peers-r32", "dora-r32", {0, 1, 2})]),
        ("PiSSA r = 32", "student/student", [("convergence-peers-r32", "pissa-r32", {0, 1, 2})]),
        ("truncated SVD", "student/svd-r32", [("convergence-sizes", "moil", {0}), ("convergence-r32-seeds", "moil", {1, 2})]),
        ("full fine-tuning", "teacher", [("convergence-sizes", "moil", {0}), ("convergence-r32-seeds", "moil", {1, 2})]),
    )
    for label, candidate, sources in rows:
        picked = sorted((r for grid, arm, seeds in sources for r in runs[grid] if r["arm"] == arm and r["seed"] in seeds),
                        key=lambda r: r["seed"])
        assert [r["seed"] for r in picked] == [0, 1, 2], (label, picked)
        scores = [r["candidates"][candidate]["test"]["accuracy"] for r in picked]
        (size,) = {r["candidates"][candidate]["stored_parameters"] for r in picked}
        row = next(line for line in table.splitlines() if line.startswith(f"| {label}"))
        expected = (f"| {statistics.mean(scores):.4f} ± {statistics.stdev(scores):.4f} | "
                    + " / ".join(f"{v:.4f}" for v in scores) + " |")
        assert row.endswith(expected), (row, expected)
        assert f"{size:,}".replace(",", " ") + ")" in row, (row, size)


def test_the_pairs_readmes_second_machine_table_is_its_grids():
    """The second-machine table: each row's two scores are the earlier grids' and the
    convergence-small-ranks grid's seed-0 test accuracy of the same point, its difference is
    theirs, and its stored size is the runs' own, to the printed digits."""
    from pathlib import Path

    pairs = Path(__file__).resolve().parents[1] / "benchmarks" / "pairs"
    runs = {(grid, r["arm"]): r for grid in ("convergence", "convergence-sizes", "convergence-small-ranks")
            for r in json.loads((pairs / grid / "results.json").read_text())["runs"] if r["seed"] == 0}
    section = (pairs / "README.md").read_text().split("### Small ranks, and the same points on a second machine", 1)[1]
    table = section.split("Test accuracy, 2 400 steps, seed 0:\n\n", 1)[1].split("\n\n", 1)[0]
    rows = [line for line in table.splitlines()[2:]]
    points = [("convergence-sizes", "student/svd-r2"), ("convergence-sizes", "student/svd-r4"),
              ("convergence", "student/svd-r11"), ("convergence-sizes", "student/svd-r32"), ("convergence", "teacher")]
    assert len(rows) == len(points)
    for row, (earlier, candidate) in zip(rows, points):
        old = runs[earlier, "moil"]["candidates"][candidate]
        new = runs["convergence-small-ranks", "moil"]["candidates"][candidate]
        assert old["stored_parameters"] == new["stored_parameters"]
        a, b = old["test"]["accuracy"], new["test"]["accuracy"]
        assert f"({old['stored_parameters']:,})".replace(",", " ") in row, row
        assert row.endswith(f"| {a:.4f} | {b:.4f} | {100 * (b - a):+.2f} |"), (row, a, b)


def test_the_pairs_readmes_third_start_table_is_its_grid():
    """The third-start table: each cell is convergence-small-ranks-xeon's seed-0 test accuracy of
    that (arm, candidate), to the printed digits; each row's stored sizes are the runs' own; DoRA's
    val sweep scores are its sweeps', to three digits."""
    from pathlib import Path

    pairs = Path(__file__).resolve().parents[1] / "benchmarks" / "pairs"
    result = json.loads((pairs / "convergence-small-ranks-xeon" / "results.json").read_text())
    runs = {r["arm"]: r for r in result["runs"] if r["seed"] == 0}
    section = (pairs / "README.md").read_text().split("### Small ranks on a third start", 1)[1].split("\n## ", 1)[0]
    table = section.split("Within it, test accuracy:\n\n", 1)[1].split("\n\n", 1)[0]
    rows = [[c.strip().strip("*") for c in line.split("|")[1:-1]] for line in table.splitlines()[2:]]
    columns = {  # rank -> (arm, candidate) per column: LoRA, DoRA, TailDecay's SVD, SVD of full FT
        2: [("lora-r2", "student/student"), ("dora-r2", "student/student"),
            ("moil-shrink-r2", "student/svd-r2"), ("moil", "student/svd-r2")],
        4: [None, ("dora-r4", "student/student"), ("moil-shrink-r4", "student/svd-r4"), ("moil", "student/svd-r4")],
        11: [None, None, None, ("moil", "student/svd-r11")],
        32: [None, None, None, ("moil", "student/svd-r32")],
    }
    assert len(rows) == len(columns) + 1
    for row, (rank, cells) in zip(rows, columns.items()):
        assert row[0].endswith(f"(r = {rank})"), row
        sizes = set()
        for value, cell in zip(row[1:], cells):
            if cell is None:
                assert value == "—", (rank, row)
                continue
            score = runs[cell[0]]["candidates"][cell[1]]
            assert value == f"{score['test']['accuracy']:.4f}", (rank, cell, value)
            sizes.add(f"{score['stored_parameters']:,}".replace(",", " "))
        assert set(row[0].split(" (")[0].split(" / ")) == sizes, (row[0], sizes)
    teacher = runs["moil"]["candidates"]["teacher"]
    assert rows[-1][-1] == f"{teacher['test']['accuracy']:.4f}" and f"{teacher['stored_parameters']:,}".replace(",", " ") in rows[-1][0]
    for sweep in result["sweeps"]:
        rank = sweep["arm"].removeprefix("dora-r")
        quoted = " / ".join(f"{s['val']:.3f}" for s in sweep["scores"])
        assert f"r = {rank}: {quoted}".replace(f"{max(s['val'] for s in sweep['scores']):.3f}",
                                              f"**{max(s['val'] for s in sweep['scores']):.3f}**") \
            in section.replace("\n  ", " ").replace(" /\n", " / "), (rank, quoted)
