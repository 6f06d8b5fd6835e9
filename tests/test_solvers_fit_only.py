"""moil.solvers.FitOnly: a student set only by its closed-form fits, no work per task step."""

from __future__ import annotations

import json

import pytest
import torch

from moil.approx import Hybrid, LowRank
from moil.backbones import vilt
from moil.objectives import ImageTextMatching, best_low_rank
from moil.optim import AdamW
from moil.recipes import MoIL, Student
from moil.solvers import ALSFit, FitOnly, Gradient, SVDFit
from moil.train import train
from vilt_batches import make_batches

TASK = ImageTextMatching()
OPT = AdamW(lr=1e-2)


@pytest.fixture(scope="module")
def backbone():
    return vilt.build(vilt.tiny("itm", seed=0))


def _run(backbone, students, steps=3, finalize=True):
    return train(MoIL(TASK, students, momentum=0.5, optimizer=OPT), backbone, make_batches(steps),
                 steps=steps, finalize=finalize)


def test_update_returns_the_same_tensors_and_no_metrics(backbone):
    """Law: FitOnly.update(θ, s) = (θ, s, {}) — the very tensors, so a step costs no copy."""
    adapter = backbone.adapter(Hybrid(2))
    base = backbone.base()
    params = adapter.init(base, generator=torch.Generator().manual_seed(0))
    opt = OPT.init(params)
    got, got_opt, metrics = FitOnly().update(adapter, base, params, opt, OPT, base, step=0)
    assert got is params and got_opt is opt and metrics == {}


def test_svd_fit_stores_the_same_student_from_any_start(backbone):
    """Law (the docs' claim that a stepped SVD student's steps are wasted): SVDFit's result
    depends on the target only, so a FitOnly student with final_fit stores bitwise the
    merged weights Ŵ of a Gradient-stepped one, and neither touches the teacher or the target."""
    fit = {"refit": SVDFit(), "final_fit": True}
    a = _run(backbone, {"s": Student(LowRank(2), solver=FitOnly(), **fit)})
    b = _run(backbone, {"s": Student(LowRank(2), solver=Gradient(steps=2), **fit)})
    base, adapter = backbone.base(), backbone.adapter(LowRank(2))
    for k in a.teacher:
        assert torch.equal(a.teacher[k], b.teacher[k]), k
        assert torch.equal(a.targets["m0"].target[k], b.targets["m0"].target[k]), k
    merged_a, merged_b = adapter.merge(a.students["s"], base), adapter.merge(b.students["s"], base)
    for k in merged_a:
        assert torch.equal(merged_a[k], merged_b[k]), k


def _squared_error(merged, target) -> float:
    return sum(float(torch.sum((target[k].double() - v.double()) ** 2)) for k, v in merged.items())


def test_student_is_untouched_between_fits_and_its_fit_is_on_the_svd_floor(backbone):
    """Law: without a due refit the FitOnly student is its initialisation, bitwise, and keeps
    no optimiser moments; after finalize its ALS fit of the final target is never worse than
    the rank-r Eckart–Young floor Σ_t ‖Δ_t − (Δ_t)_r‖² + Σ_t ‖b̄_t − b0_t‖² (ALS's first round
    from M = 0 is that optimum, its bias shift a least-squares fit)."""
    spec = Student(Hybrid(2), solver=FitOnly(), refit=ALSFit(), final_fit=True)
    init = MoIL(TASK, {"h": spec}, momentum=0.5, optimizer=OPT).init(backbone, seed=0)
    assert init.imitation.student_opts["h"].exp_avg == {} == init.imitation.student_opts["h"].exp_avg_sq
    trained = _run(backbone, {"h": spec}, finalize=False)
    for k, v in init.imitation.students["h"].items():
        assert torch.equal(trained.students["h"][k], v), k
    done = _run(backbone, {"h": spec})
    base, adapter = backbone.base(), backbone.adapter(Hybrid(2))
    target = done.targets["m0"].target
    floor = sum(float(best_low_rank(target[k].double() - w.double(), 2).error) ** 2 if k.endswith(".weight")
                else float(torch.sum((target[k].double() - w.double()) ** 2)) for k, w in base.items())
    assert _squared_error(adapter.merge(done.students["h"], base), target) <= floor * (1 + 1e-6)


def test_a_resumed_fit_only_run_is_the_uninterrupted_run(backbone, tmp_path):
    """Law: stop after 2 of 4 steps, resume ⇒ bitwise the uninterrupted run's students (its
    empty optimiser state and periodic refits included)."""
    spec = {"p": Student(LowRank(2), solver=FitOnly(), refit=SVDFit(), refit_every=2, final_fit=True),
            "h": Student(Hybrid(2), solver=FitOnly(), refit=ALSFit(), final_fit=True)}
    recipe = MoIL(TASK, spec, momentum=0.5, optimizer=OPT)
    batches = make_batches(4)
    whole = train(recipe, backbone, batches, steps=4)
    train(recipe, backbone, batches, steps=2, run_dir=tmp_path, finalize=False)
    resumed = train(recipe, backbone, batches, steps=4, run_dir=tmp_path, resume=True)
    for name in spec:
        for k, v in whole.students[name].items():
            assert torch.equal(resumed.students[name][k], v), (name, k)


def test_fit_only_without_a_final_fit_or_with_a_mismatched_fit_is_refused(backbone):
    """A FitOnly student that nothing would set (no final fit; refit_every alone may never come
    or leave an older fit), or given an lr it never reads, is refused where it is written, and
    so is one the recipe's solver makes FitOnly; a refit the approximation cannot take fails
    when the run starts (init), naming the student, not after the run."""
    with pytest.raises(ValueError, match="final_fit=True"):
        Student(LowRank(2), solver=FitOnly(), refit=SVDFit())
    with pytest.raises(ValueError, match="final_fit=True"):
        Student(LowRank(2), solver=FitOnly(), refit=SVDFit(), refit_every=10)
    with pytest.raises(ValueError, match="closed-form solver"):
        Student(LowRank(2), solver=FitOnly(), final_fit=True)
    with pytest.raises(ValueError, match="remove lr"):
        Student(LowRank(2), solver=FitOnly(), refit=SVDFit(), final_fit=True, lr=1e-3)
    Student(LowRank(2), solver=FitOnly(), refit=SVDFit(), refit_every=2, final_fit=True)  # accepted
    recipe = MoIL(TASK, {"s": Student(LowRank(2))}, optimizer=OPT, solver=FitOnly())
    with pytest.raises(ValueError, match="student 's'.*final_fit=True"):
        recipe.init(backbone, seed=0)
    recipe = MoIL(TASK, {"s": Student(Hybrid(2), refit=SVDFit(), final_fit=True)}, optimizer=OPT)
    with pytest.raises(TypeError, match="student 's': SVDFit fits LowRank students, got Hybrid"):
        recipe.init(backbone, seed=0)


@pytest.mark.slow
def test_a_grid_with_a_fit_only_student_reports_it(tmp_path):
    """``solver_steps = 0`` in a config: the run logs no per-step distance for that student,
    scores it like any other, and its SVD fit lands where the stepped SVD student's does
    (same target, the teacher: momentum 0), on the rank-2 Eckart–Young floor."""
    from moil.harness.config import parse_config
    from moil.harness.grid import run_grid

    svd = {"approx": "lowrank", "rank": 2, "momentum": 0.0, "refit": "svd", "final_fit": True}
    config = parse_config({
        "data": {"limit": 40},
        "model": {"family": "tiny"},
        "train": {"steps": 3, "seeds": [0], "tasks": ["itm"], "threads": 1},
        "arms": [{"name": "moil", "recipe": "moil", "lr": 1e-3, "momentum": "half-life:2", "students": [
            {"name": "stepped", **svd},
            {"name": "fit", **svd, "solver_steps": 0},
            {"name": "hybrid-fit", "approx": "hybrid", "rank": 2, "solver_steps": 0, "refit": "als",
             "final_fit": True},
        ]}],
    })
    results = run_grid(config, tmp_path)
    (run,) = results["runs"]
    scores, fits = run["candidates"], run["imitation"]
    assert fits["fit"]["distance"] == pytest.approx(fits["stepped"]["distance"], rel=1e-5)
    assert fits["fit"]["distance"] == pytest.approx(fits["fit"]["eckart_young_floor"], rel=1e-5)
    assert scores["student/fit"]["test"] == scores["student/stepped"]["test"]
    assert "student/hybrid-fit" in scores
    rows = (tmp_path / run["folder"] / "metrics.jsonl").read_text().splitlines()
    assert "distance/stepped" in rows[-1] and "distance/fit" not in rows[-1]
    assert "hybrid-fit" in (tmp_path / "report.md").read_text()
    from moil.harness.report import _curves

    with pytest.MonkeyPatch.context() as patch:  # the distance figure lists every student, curve or not
        drawn = []
        patch.setattr("moil.harness.report.distance_figure", lambda task, students: drawn.extend(students))
        _curves(tmp_path, results, "itm")
    assert {s.label: bool(s.curves) for s in drawn} == {"moil · stepped": True, "moil · fit": False,
                                                        "moil · hybrid-fit": False}


def test_the_committed_fit_only_grid_pairs_each_fit_only_student_with_its_stepped_twin():
    """benchmarks/pairs/fit-only: each seed's students share one teacher and target, so the
    fit-only SVD student scores exactly as the stepped one (SVDFit ignores where it starts),
    and the fit-only Hybrid's ALS fit (from the student's initialisation) ends closer to the
    target than the ALS fit warm-started by 4 gradient steps a task step, on every seed (the
    pairs README's claim)."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks" / "pairs" / "fit-only"
    runs = json.loads((folder / "results.json").read_text())["runs"]
    assert sorted(r["seed"] for r in runs) == [0, 1, 2]
    for run in runs:
        scores, fits = run["candidates"], run["imitation"]
        assert scores["student/svd-r11-fit-only"] == scores["student/svd-r11"], run["seed"]
        assert fits["svd-r11-fit-only"]["distance"] == pytest.approx(fits["svd-r11"]["distance"], rel=1e-9)
        assert fits["hybrid-fit-only+als"]["distance"] < fits["hybrid-k4+als"]["distance"], run["seed"]
    readme = (folder.parent / "README.md").read_text()
    for name in ("hybrid-k4+als", "hybrid-fit-only+als", "svd-r11", "svd-r11-fit-only"):
        per_seed = " / ".join(f"{r['candidates'][f'student/{name}']['test']['accuracy']:.4f}"
                              for r in sorted(runs, key=lambda r: r["seed"]))
        distances = " / ".join(f"{r['imitation'][name]['distance']:.3f}" for r in sorted(runs, key=lambda r: r["seed"]))
        assert f"| {per_seed} | {distances} |" in readme, name
