"""The report's plots explain themselves: the distance plot marks the post-fit value the
table gives and labels both LowRank floors; the spectrum plot marks ``r`` and ``r + r_t``;
no title is cut off; a too-short run's report says its numbers are not meaningful.

Laws: the rank-``r`` LowRank floor is Eckart–Young's (``best_low_rank``) plus the biases'
shift; an SVD-fitted LowRank student reaches it exactly; a LowRank student's equal-size
rank is its own rank; a Hybrid's update has numerical rank ``r + r_t``.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.backends.backend_agg import FigureCanvasAgg
from torch import nn
from typer.testing import CliRunner

from moil.approx import Hybrid, LowRank
from moil.backbones.base import from_model
from moil.harness.cli import app
from moil.harness.imitation import equal_size_rank, imitation_report, low_rank_floor
from moil.harness.plots import StudentDistance, distance_figure, numerical_rank, spectrum_figure
from moil.harness.report import MEANINGFUL_STEPS, caveat, write_report
from moil.objectives import best_low_rank

SMALL = ["--model", "tiny", "--steps", "3", "--limit", "40"]  # as tests/test_cli.py


# -- imitation_report on a hand-built two-layer model --------------------------
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(7, 9), nn.Linear(9, 11)  # small odd sizes


class _Recipe:
    """The three methods :func:`imitation_report` calls, over fixed tensors."""

    def __init__(self, target, students):
        self.target, self.students = target, students

    def imitation_targets(self, state, backbone):
        return {name: self.target for name in self.students}

    def candidates(self, state, backbone):
        return {}

    def students_of(self, state, backbone):
        return self.students


@pytest.fixture
def setup():
    torch.manual_seed(0)
    backbone = from_model(_Net(), ["first", "second"], sharing=None)
    base = backbone.base()
    target = {k: v + 0.1 * torch.randn_like(v) for k, v in base.items()}
    return backbone, base, target


def test_svd_fitted_low_rank_student_sits_on_its_floor(setup):
    """LowRank(r) fitted by Eckart–Young: distance = rank-r floor = equal-size floor, with
    the biases' shift (a LowRank keeps b0) counted in both."""
    backbone, base, target = setup
    adapter, rank = backbone.adapter(LowRank(3)), 3
    params = {}
    for t in ("first", "second"):
        fit = best_low_rank(target[f"{t}.weight"] - base[f"{t}.weight"], rank)
        params[adapter.key(t, "lora_a")], params[adapter.key(t, "lora_b")] = fit.lora_a, fit.lora_b
    info = imitation_report(_Recipe(target, {"lr": (adapter, params)}), None, backbone)["lr"]
    bias2 = sum(float((target[k] - base[k]).double().square().sum()) for k in base if k.endswith(".bias"))
    floor = (sum(float(best_low_rank(target[k] - base[k], rank).error) ** 2
                 for k in base if k.endswith(".weight")) + bias2) ** 0.5
    assert bias2 > 0
    assert info["eckart_young_floor"] == pytest.approx(floor, rel=1e-5)
    assert info["distance"] == pytest.approx(floor, rel=1e-5)
    assert info["equal_size_rank"] == rank and info["transform_rank"] is None
    assert info["equal_size_floor"] == pytest.approx(info["eckart_young_floor"], rel=1e-12)


def test_hybrid_report_gives_transform_rank_and_equal_size_floor(setup):
    """A Hybrid(2) stores more than LowRank(2): its equal-size rank is the stored size over
    Σ_w(out + in), its floor is ≤ the rank-2 floor, and its update has rank r + r_t = 4."""
    backbone, base, target = setup
    adapter = backbone.adapter(Hybrid(2))
    generator = torch.Generator().manual_seed(1)
    params = {k: torch.randn(v.shape, generator=generator) * 0.3 for k, v in adapter.init(base).items()}
    info = imitation_report(_Recipe(target, {"hy": (adapter, params)}), None, backbone)["hy"]
    per_rank = (9 + 7) + (11 + 9)
    assert info["stored_parameters"] == adapter.num_params(base)
    assert info["equal_size_rank"] == round(adapter.num_params(base) / per_rank) > 2
    assert info["equal_size_rank"] == equal_size_rank(backbone, adapter)
    assert info["transform_rank"] == 2
    assert info["equal_size_floor"] <= info["eckart_young_floor"]
    assert numerical_rank(info["spectrum_student"]) == 4


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), out_f=st.integers(1, 9), in_f=st.integers(1, 9), rank=st.integers(1, 9))
def test_low_rank_floor_is_eckart_young(seed, out_f, in_f, rank):
    """Law: low_rank_floor(svdvals(Δ), 0, r) = best_low_rank(Δ, r).error, and adding a
    bias shift b² gives √(error² + b²)."""
    rank = min(rank, out_f, in_f)
    delta = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    spectra = {"w": torch.linalg.svdvals(delta)}
    error = float(best_low_rank(delta, rank).error)
    assert low_rank_floor(spectra, 0.0, rank) == pytest.approx(error, rel=1e-9, abs=1e-12)
    assert low_rank_floor(spectra, 2.0, rank) == pytest.approx((error**2 + 2.0) ** 0.5, rel=1e-9)


def test_numerical_rank_finds_the_gap():
    assert numerical_rank([3.0, 1.0, 0.5, 1e-7, 1e-8]) == 3
    assert numerical_rank([3.0, 1.0, 0.5]) == 3  # no gap ≥ 100: every positive value
    assert numerical_rank([0.0, 0.0]) == 0


# -- the figures --------------------------------------------------------------
def _labels(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def _assert_titles_inside(fig) -> None:
    FigureCanvasAgg(fig).draw()
    renderer, box = fig.canvas.get_renderer(), fig.bbox
    for ax in fig.axes:
        extent = ax.title.get_window_extent(renderer)
        assert ax.title.get_text()
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and extent.y1 <= box.y1, ax.title.get_text()
    for legend in fig.legends:
        extent = legend.get_window_extent(renderer)
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0


def test_distance_figure_marks_the_final_fit_and_both_floors():
    student = StudentDistance(label="moil · hy", curves=[[0.1, 1.0, 1.7], [0.2, 1.1, 1.7]], finals=[0.876, 0.878],
                              final_fit="als", rank=8, floors=[1.0, 1.0], equal_size_rank=11,
                              equal_size_floors=[0.9, 0.9])
    fig = distance_figure("itm", [student])
    labels = _labels(fig)
    assert any("after final fit (ALS) = 0.877" in s and "table" in s for s in labels), labels
    assert any(s.startswith("rank-8 LowRank floor (Eckart–Young)") for s in labels), labels
    assert any("same stored size (rank 11)" in s for s in labels), labels
    star = [line for line in fig.axes[0].lines if line.get_marker() == "*"]
    assert len(star) == 1 and list(star[0].get_xdata()) == [3] and star[0].get_ydata()[0] == pytest.approx(0.877)
    assert {round(line.get_ydata()[0], 6) for line in fig.axes[0].lines if line.get_linestyle() in ("--", ":")} == {1.0, 0.9}
    _assert_titles_inside(fig)


def test_a_student_without_a_curve_is_marked_at_the_runs_last_step():
    """A FitOnly student logs no distance per step: the figure draws no curve for it and puts
    its final fit's star at the run's last step, beside a stepped student's curve."""
    stepped = StudentDistance(label="moil · k4", curves=[[2.0, 1.5, 1.2, 1.1]], finals=[1.0], final_fit="als",
                              steps=4)
    fit = StudentDistance(label="moil · fit", curves=[], finals=[0.9], final_fit="als", steps=4)
    fig = distance_figure("itm", [stepped, fit])
    labels = _labels(fig)
    assert any(s.startswith("moil · fit: after final fit (ALS) = 0.9") for s in labels), labels
    assert not any(s.startswith("moil · fit: during training") for s in labels), labels
    stars = [line for line in fig.axes[0].lines if line.get_marker() == "*"]
    assert [list(line.get_xdata()) for line in stars] == [[4], [4]]


def test_spectrum_figure_marks_r_and_r_plus_r_t_and_says_why():
    info = {"rank": 8, "transform_rank": 8, "equal_size_rank": 11, "distance": 1.47, "eckart_young_floor": 1.58,
            "equal_size_floor": 1.5, "spectrum_teacher": [1.0] * 30, "spectrum_target": [0.9] * 30,
            "spectrum_student": [0.5] * 16 + [1e-7] * 14}
    fig = spectrum_figure("itm · moil · seed 0 · layer 3.attention.self.query " + "x" * 60, "hy", info)
    labels = _labels(fig)
    assert any("numerical rank 16" in s for s in labels), labels
    assert any(s.startswith("r + r_t = 16") and "rank ≤ r + r_t" in s for s in labels), labels
    assert any("low-rank rank r = 8" in s for s in labels), labels
    lines = {line.get_xdata()[0] for line in fig.axes[0].lines if line.get_linestyle() in ("--", ":", "-.")}
    assert lines == {8, 16, 11}
    assert "rank-8 LowRank floor" in fig.axes[0].get_title()
    _assert_titles_inside(fig)


# -- the quick demo's report ---------------------------------------------------
@pytest.fixture(scope="module")
def quick_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), *SMALL], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def test_quick_report_says_its_numbers_are_not_meaningful(quick_dir):
    head = "\n".join((quick_dir / "report.md").read_text().splitlines()[:4])
    assert "not meaningful" in head and "too few steps" in head


def test_caveat_only_for_short_runs():
    results = {"runs": [{"steps": MEANINGFUL_STEPS}], "config": {}}
    assert caveat(results) == []
    assert "not meaningful" in caveat({"runs": [{"steps": MEANINGFUL_STEPS - 1}], "config": {}})[0]


def test_quick_report_plots_agree_with_its_table(quick_dir, monkeypatch):
    """The distance plot's ★ is the imitation table's distance (mean over seeds), and the
    floors drawn are the table's; the spectrum marks r + r_t of the Hybrid student."""
    results = json.loads((quick_dir / "results.json").read_text())
    info = next(r["imitation"] for r in results["runs"] if r.get("imitation"))["hybrid-k4+als"]
    assert info["transform_rank"] == info["rank"] == 8
    drawn = {}
    import moil.harness.report as report

    def spy(name, real):
        def wrapped(*args):
            drawn[name] = (args, real(*args))
            return drawn[name][1]
        monkeypatch.setattr(report, name, wrapped)

    spy("distance_figure", report.distance_figure)
    spy("spectrum_figure", report.spectrum_figure)
    write_report(results, quick_dir)
    (_, students), fig = drawn["distance_figure"]
    (student,) = students
    assert student.finals == [info["distance"]] and student.final_fit == "als"
    assert student.floors == [info["eckart_young_floor"]] and student.equal_size_floors == [info["equal_size_floor"]]
    assert any(f"= {info['distance']:.4g} (the table's value)" in s for s in _labels(fig))
    assert f"| {info['distance']:.4f} | {info['eckart_young_floor']:.4f} " in (quick_dir / "report.md").read_text()
    assert any(s.startswith(f"r + r_t = {info['rank'] + info['transform_rank']}") for s in _labels(drawn["spectrum_figure"][1]))
