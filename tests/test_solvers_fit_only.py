"""moil.solvers.FitOnly: a student set only by its closed-form fits, no work per task step."""

from __future__ import annotations

import pytest
import torch

from moil.approx import Hybrid, LowRank
from moil.backbones import vilt
from moil.objectives import ImageTextMatching
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


def test_svd_final_fit_stores_what_the_gradient_student_stores(backbone):
    """Law: SVDFit's result depends on the target only, so a FitOnly student with
    final_fit stores the same merged weights Ŵ as a Gradient-stepped one (float32, 1e-5),
    and leaves the teacher and the momentum target bitwise as they are."""
    fit = {"solver": FitOnly(), "refit": SVDFit(), "final_fit": True}
    stepped = {"solver": Gradient(steps=2), "refit": SVDFit(), "final_fit": True}
    a = _run(backbone, {"s": Student(LowRank(2), **fit)})
    b = _run(backbone, {"s": Student(LowRank(2), **stepped)})
    base, adapter = backbone.base(), backbone.adapter(LowRank(2))
    for k in a.teacher:
        assert torch.equal(a.teacher[k], b.teacher[k]), k
        assert torch.equal(a.targets["m0"].target[k], b.targets["m0"].target[k]), k
    merged_a, merged_b = adapter.merge(a.students["s"], base), adapter.merge(b.students["s"], base)
    for k in merged_a:
        torch.testing.assert_close(merged_a[k], merged_b[k], rtol=1e-5, atol=1e-6)


def test_student_is_untouched_between_fits(backbone):
    """Law: without a due refit the FitOnly student is its initialisation, bitwise; after
    finalize it is its refit of the final target (ALS: never worse than the SVD floor of the
    same target, so it has moved)."""
    spec = Student(Hybrid(2), solver=FitOnly(), refit=ALSFit(), final_fit=True)
    init = MoIL(TASK, {"h": spec}, momentum=0.5, optimizer=OPT).init(backbone, seed=0)
    trained = _run(backbone, {"h": spec}, finalize=False)
    for k, v in init.imitation.students["h"].items():
        assert torch.equal(trained.students["h"][k], v), k
    done = _run(backbone, {"h": spec})
    base, adapter = backbone.base(), backbone.adapter(Hybrid(2))
    target = done.targets["m0"].target
    err = sum(float(torch.sum((target[k] - v) ** 2)) for k, v in adapter.merge(done.students["h"], base).items())
    before = sum(float(torch.sum((target[k] - v) ** 2))
                 for k, v in adapter.merge(init.imitation.students["h"], base).items())
    assert err < before


def test_fit_only_without_a_fit_is_refused():
    """A FitOnly student that no refit ever sets is refused where it is written, naming the fix."""
    with pytest.raises(ValueError, match="final_fit"):
        Student(LowRank(2), solver=FitOnly(), refit=SVDFit())
    with pytest.raises(ValueError, match="closed-form solver"):
        Student(LowRank(2), solver=FitOnly(), final_fit=True)


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
