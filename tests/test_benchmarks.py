"""Smoke tests of ``benchmarks/``: every script runs at ``--size tiny --steps 2`` and reports
its side-by-side ratios as positive finite numbers, printed and in ``--json``."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = ("step_cost", "many_students", "inference", "imitation_quality", "fit_cost", "merge_precision", "memory_trace")
TINY = ["--size", "tiny", "--steps", "2", "--device", "cpu", "--threads", "1"]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(
        f"moil_benchmark_{name}", BENCHMARKS / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``run(name)`` → (result dict, JSON written, stdout), each script run once per module;
    torch's thread count is restored afterwards."""
    threads, done = torch.get_num_threads(), {}

    def go(name: str):
        if name not in done:
            path = tmp_path_factory.mktemp("bench") / f"{name}.json"
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                result = _load(name).main([*TINY, "--json", str(path)])
            done[name] = result, json.loads(path.read_text()), printed.getvalue()
        return done[name]

    yield go
    torch.set_num_threads(threads)


def _check_ratios(ratios: dict) -> None:
    assert ratios, "no ratios reported"
    for key, value in ratios.items():
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_reports_positive_finite_ratios(run, name):
    result, written, printed = run(name)
    assert written["ratios"] == pytest.approx(result["ratios"])
    _check_ratios(written["ratios"])
    assert written["size"] == "tiny" and written["machine"]["torch"] == torch.__version__
    assert name in printed and "----" in printed  # a table was printed
    if name == "merge_precision":  # the bf16 merge within the bound tests/test_train.py states
        assert 0 < written["worst_over_bound"] <= 1


@pytest.mark.slow
def test_step_cost_measures_every_arm_and_its_memory(run):
    _, written, printed = run("step_cost")
    arms = {"moil", "moil_fit_only", "full_ft", "lora", "peft_lora", "torch_full_ft"}
    assert set(written["seconds_per_step"]) == arms == set(written["peak_memory"])
    _check_ratios(written["memory_ratios"])
    assert written["ratios"]["full_ft/full_ft"] == 1.0
    # Equal stored size: LowRank(r_eq) within one rank step of the Hybrid student.
    params = written["params"]
    assert (
        abs(params["lora"]["stored"] - params["moil"]["stored"])
        < params["lora"]["stored"] / written["lora_rank"]
    )
    assert "peak Δ MiB" in printed


@pytest.mark.slow
def test_many_students_joint_equals_solo(run):
    _, written, _ = run("many_students")
    assert set(written["ratios"]) >= {
        "joint_1/separate_1",
        "joint_2/separate_2",
        "joint_4/separate_4",
        "fit_only_4/full_ft",
    }
    assert written["max_abs_joint_minus_solo"] < 1e-5  # one run with k students == k runs


@pytest.mark.slow
def test_inference_merged_model_is_the_student(run):
    _, written, _ = run("inference")
    assert set(written["ratios"]) == {"merged/base", "functional/base", "peft_unmerged/base"}
    assert written["merged_vs_functional_max_abs"] < 1e-5


@pytest.mark.slow
def test_imitation_quality_respects_the_eckart_young_floor(run):
    _, written, _ = run("imitation_quality")
    ratios = written["ratios"]
    assert ratios["lowrank/svd_fit/ey_floor"] == pytest.approx(1.0, rel=1e-6)
    for key, value in ratios.items():
        if key.startswith("lowrank/"):  # no rank-r_eq additive student beats the floor
            assert value >= 1.0 - 1e-6, (key, value)
    assert written["distances"]["hybrid/als_fit"] < written["delta_norm"]


@pytest.mark.slow
def test_fit_cost_times_both_fits_at_their_floors(run):
    """SVDFit meets the Eckart–Young floor at r_eq; ALSFit's Hybrid(r) is within the rank-r
    floor (Hybrid ⊇ LowRank at the same r); both timed, wall and CPU seconds > 0."""
    _, written, printed = run("fit_cost")
    assert written["ratios"]["svd_fit/ey_floor"] == pytest.approx(1.0, rel=1e-6)
    assert written["distances"]["als_fit"] <= written["ey_floor_hybrid_rank"] * (1 + 1e-9)
    assert set(written["seconds"]) == {"svd_fit", "als_fit"}
    for arm, t in written["seconds"].items():
        assert all(math.isfinite(t[k]) and t[k] > 0 for k in ("median", "min", "cpu_median")), arm
    assert "ALSFit(" in printed


def test_observer_overhead_times_every_arm(tmp_path):
    """The Trainer and plain-loop arms, with and without the observer, are all timed, and
    the with ÷ without ratios are the ratios of the printed medians (tiny, 1 round)."""
    pytest.importorskip("accelerate")  # the Trainer needs it
    threads, path, printed = torch.get_num_threads(), tmp_path / "observer.json", io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            result = _load("observer_overhead").main(
                [*TINY, "--steps", "1", "--rounds", "1", "--no-memory", "--json", str(path)]
            )
    finally:
        torch.set_num_threads(threads)
    written = json.loads(path.read_text())
    assert written["ratios"] == pytest.approx(result["ratios"])
    assert set(written["ratios"]) == {
        "trainer+moil/trainer",
        "trainer+moil_k2/trainer",
        "loop+observer/loop",
    }
    _check_ratios(written["ratios"])
    times = written["seconds_per_step"]
    assert set(times) == {"trainer", "trainer+moil", "trainer+moil_k2", "loop", "loop+observer"}
    for with_, without in (("trainer+moil", "trainer"), ("loop+observer", "loop")):
        ratio = times[with_]["median"] / times[without]["median"]
        assert written["ratios"][f"{with_}/{without}"] == pytest.approx(ratio)
    assert "observer_overhead" in printed.getvalue() and "----" in printed.getvalue()


def test_scaling_times_every_arm_and_k(tmp_path, capsys):
    """Every arm of ``scaling.py`` (full FT, LoRA, MoIL with k = 1, 2, 4, 8 students, and
    k = 1, 8 FitOnly students) gets a positive finite wall and CPU time, paired ratio and
    per-student slope (stepped and FitOnly); a memory child
    (run in-process here) reports a positive peak (tiny, 1 round × 1 step)."""
    scaling, threads, path = _load("scaling"), torch.get_num_threads(), tmp_path / "scaling.json"
    tiny = ["--sizes", "tiny", "--steps", "1", "--rounds", "1", "--device", "cpu", "--threads", "1"]
    try:
        result = scaling.main([*tiny, "--no-memory", "--json", str(path)])
        printed = capsys.readouterr().out
        scaling.main([*tiny, "--memory-arm", "moil_2", "--memory-steps", "1"])
        child = capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)
    written = json.loads(path.read_text())
    assert written["results"]["tiny"]["ratios"] == pytest.approx(result["results"]["tiny"]["ratios"])
    tiny_result = written["results"]["tiny"]
    arms = {"full_ft", "lora", "moil_1", "moil_2", "moil_4", "moil_8", "fit_only_1", "fit_only_8"}
    assert set(tiny_result["seconds_per_step"]) == arms
    for arm, t in tiny_result["seconds_per_step"].items():
        for key in ("median", "cpu_median"):
            assert math.isfinite(t[key]) and t[key] > 0, (arm, key, t[key])
        assert arm in printed
    _check_ratios(tiny_result["ratios"])
    assert tiny_result["ratios"]["full_ft/full_ft"] == 1.0
    assert math.isfinite(tiny_result["per_student"]["cpu_ms"])
    assert math.isfinite(tiny_result["per_fit_only_student"]["cpu_ms"])
    assert tiny_result["tokens"] == tiny_result["batch"] * tiny_result["sequence"] > 0
    assert "----" in printed and "growth in words" in printed and len(written["growth_words"]) == 3
    mark = [ln for ln in child.splitlines() if ln.startswith("@@MEMORY@@")]
    assert len(mark) == 1 and json.loads(mark[0][len("@@MEMORY@@") :])["peak_bytes"] > 0


@pytest.mark.slow
def test_gpu_script_dry_run_passes_on_cpu(tmp_path):
    """``gpu.sh --dry-run`` runs every benchmark and training step of the GPU script on the
    CPU at --size tiny; every step exits 0 (the script's exit code counts failed steps)."""
    done = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu.sh"), "--dry-run"],
        check=False,
        env={**os.environ, "OUT": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = (tmp_path / "gpu.log").read_text()
    assert "failed steps: 0" in log
    for step in ("step-cost", "many-students", "inference", "imitation-quality", "observer-overhead", "train-cpu",
                 "train-cpu-bf16"):
        assert f"=== {step}: exit 0" in log, step


@pytest.mark.slow
def test_imitation_update_times_the_update_in_every_moil_arm(run):
    """Every MoIL arm (closed form / autograd × flushed / not) records its in-step
    ``Imitation.update`` time, and the patched update and flush are restored afterwards."""
    from moil.recipes import imitation as imitation_module
    from moil.subnormals import flush_subnormals

    _, written, printed = run("imitation_update")
    moil_arms = {"moil", "no_flush", "autograd", "autograd_no_flush", "fit_only"}
    assert set(written["imitation_update_ms"]) == moil_arms
    assert set(written["seconds_per_step"]) == moil_arms | {"full_ft"}
    for name, ms in written["imitation_update_ms"].items():
        assert math.isfinite(ms) and ms > 0, name
    # FitOnly's update is the EMA alone: less than the stepped student's EMA + gradient step.
    assert written["imitation_update_ms"]["fit_only"] < written["imitation_update_ms"]["moil"]
    assert imitation_module.flush_subnormals is flush_subnormals
    assert imitation_module.Imitation.update.__name__ == "update"
    assert "imitation_update" in printed and "----" in printed


def test_precision_bf16_reaches_every_forward():
    """``--precision bf16`` autocasts the forward of moil's recipes (the backbone) and of
    the plain-PyTorch arms alike: a q projection's output is bf16 in both, fp32 without."""
    from moil.recipes import FullFineTune, default_optimizer

    common = _load("common")
    threads = torch.get_num_threads()
    try:
        for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            setup = common.build("tiny", "cpu", 0, precision)
            seen = []
            query = setup.model.get_submodule(setup.backbone.targets[0])
            query.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
            recipe = FullFineTune(setup.task_loss, optimizer=default_optimizer(total_steps=10))
            common.recipe_step(recipe, setup)()
            common.torch_train_step(setup, common.torch_full_ft(setup, copy_model=False))()
            assert seen and set(seen) == {dtype}, (precision, seen)
    finally:
        torch.set_num_threads(threads)
