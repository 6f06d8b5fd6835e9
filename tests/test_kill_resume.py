"""Runs that are stopped — by an exception, NaN/inf, SIGTERM, SIGKILL, a dead parent — lose
nothing and resume to bitwise the state of a run that never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import NamedTuple

import pytest
import torch
from vilt_batches import make_batches

from moil.approx import Hybrid, LowRank
from moil.backbones import vilt
from moil.checkpoint import load_checkpoint, split_state
from moil.objectives import ImageTextMatching
from moil.optim import AdamW
from moil.recipes import MoIL, Student
from moil.solvers import ALSFit, Gradient, SVDFit
from moil.train import CHECKPOINT, load_state, train

SOLVERS = {
    "gradient": Student(LowRank(2)),
    "gradient-2-steps": Student(Hybrid(2), solver=Gradient(2)),
    "svd-every-1": Student(LowRank(2), refit=SVDFit(), refit_every=1),
    "svd-every-2": Student(LowRank(2), refit=SVDFit(), refit_every=2),
    "als-every-2": Student(Hybrid(2), refit=ALSFit(), refit_every=2),
    "als-every-3": Student(Hybrid(2), refit=ALSFit(), refit_every=3),
}


@pytest.fixture(scope="module")
def backbone():
    return vilt.build(vilt.tiny("itm", seed=0))


class Stop(Exception):
    pass


@pytest.mark.parametrize("name", list(SOLVERS))
def test_resume_is_bitwise_for_every_solver_and_refit_schedule(backbone, tmp_path, name):
    """Law (fault 5): stopped after k steps and resumed ⇒ every tensor of the state equals the
    uninterrupted run's bit for bit; and every live state tensor is contiguous, as a checkpoint
    restores it (a transposed refit output made BLAS round differently after a resume)."""
    recipe = MoIL(ImageTextMatching(), {"s": SOLVERS[name]}, momentum=0.8, optimizer=AdamW(lr=1e-2))
    batches = make_batches(6)
    straight = train(recipe, backbone, batches, steps=6, finalize=False)
    tensors = split_state(straight)[0]
    assert [k for k, v in tensors.items() if not v.is_contiguous()] == []
    for stop in (3, 5):
        run = tmp_path / f"stop{stop}"

        def stop_at(step, metrics, stop=stop):
            if step == stop:
                raise Stop

        with pytest.raises(Stop):
            train(recipe, backbone, batches, steps=6, run_dir=run, on_step=stop_at)
        resumed = split_state(train(recipe, backbone, batches, steps=6, run_dir=run, resume=True, finalize=False))[0]
        assert [k for k in tensors if not torch.equal(resumed[k], tensors[k])] == []


# ----------------------------------------------------------------------------- fault 7


class Toy(NamedTuple):
    step: int
    w: torch.Tensor
    exp_avg_sq: torch.Tensor


class Overflowing:
    """A recipe whose optimiser moment overflows to inf at step 3 while its loss stays
    finite; step 4's loss is then NaN (as a real AdamW student's does)."""

    def init(self, backbone, seed=0):
        return Toy(0, torch.zeros(3), torch.zeros(3))

    def step(self, state, backbone, batch):
        if state.step == 3:
            raise FloatingPointError("task loss is nan at step 4; the state was not updated.")
        v = torch.full((3,), float("inf")) if state.step == 2 else state.exp_avg_sq + 1
        return Toy(state.step + 1, state.w + 1, v), {"task_loss": 0.0}

    def finalize(self, state, backbone):
        return state


class NoModel:
    """The least of a backbone train() reads: its (empty) base weights."""

    def base(self):
        return {"w0": torch.zeros(1)}


def test_only_a_finite_state_is_checkpointed(tmp_path):
    """Fault 7: after divergence the checkpoint holds the last *finite* state (step 2 here,
    not step 3 whose moment is inf), so `resume` can continue; the error says so."""
    with pytest.raises(FloatingPointError) as info:
        train(Overflowing(), NoModel(), lambda step: {}, steps=6, run_dir=tmp_path, checkpoint_every=2)
    assert "holds NaN/inf and was not checkpointed" in "".join(info.value.__notes__)
    tensors, meta = load_checkpoint(tmp_path / CHECKPOINT)
    assert meta["step"] == 2 and all(bool(torch.isfinite(t).all()) for t in tensors.values())
    state, _ = load_state(tmp_path / CHECKPOINT, Overflowing().init(NoModel()))
    assert state.step == 2


# ----------------------------------------------------------------------------- kill tests

CONFIG = """\
[data]
limit = 40
[model]
family = "tiny"
[train]
steps = 30
seeds = [0]
tasks = ["itm"]
threads = 1
checkpoint_every = 4
eval_splits = ["val"]
[[arms]]
name = "moil"
recipe = "moil"
lr = 1e-3
momentum = "half-life:4"
[[arms.students]]
name = "gradient"
approx = "lowrank"
rank = 2
[[arms.students]]
name = "refit"
approx = "hybrid"
rank = 2
refit = "als"
refit_every = 3
"""
MAIN = "import torch, sys; torch.set_num_threads(1); from moil.harness.cli import main; sys.argv[0] = 'moil'; main()"


def moil(*args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", MAIN, *map(str, args)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def steps_logged(run) -> int:
    try:
        return (run / "metrics.jsonl").read_text().count("\n")
    except FileNotFoundError:
        return 0


def kill_after(proc, run, steps: int, sig: int) -> int:
    """Send ``sig`` once ``steps`` steps are logged; the exit status."""
    deadline = time.monotonic() + 120
    while steps_logged(run) < steps and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, f"the run ended before step {steps}: {proc.stderr.read()}"
    proc.send_signal(sig)
    return proc.wait(timeout=120)


@pytest.mark.slow
def test_sigkill_and_sigterm_then_resume_is_bitwise_the_uninterrupted_run(tmp_path):
    """Kill test (faults 5 and 8): a tiny `moil train` (a gradient and an ALS-refit student)
    is SIGKILLed after step 6, resumed and SIGTERMed after step 15 (exit 143 with a
    checkpoint of that step), resumed to the end: the checkpoint's tensors equal those of an
    uninterrupted run bit for bit, and metrics.jsonl has every step once."""
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    ref, run = tmp_path / "ref", tmp_path / "run"
    straight = moil("train", "-c", config, "-o", ref)
    first = moil("train", "-c", config, "-o", run)
    assert kill_after(first, run, 6, signal.SIGKILL) == -signal.SIGKILL
    assert straight.wait(timeout=120) == 0, straight.stderr.read()
    second = moil("train", "-c", config, "-o", run, "--resume")
    assert kill_after(second, run, 15, signal.SIGTERM) == 143, second.stderr.read()
    stopped_at = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert load_checkpoint(run / CHECKPOINT)[1]["step"] == stopped_at  # SIGTERM lost nothing
    third = moil("train", "-c", config, "-o", run, "--resume")
    assert third.wait(timeout=120) == 0, third.stderr.read()
    want, _ = load_checkpoint(ref / CHECKPOINT)
    got, meta = load_checkpoint(run / CHECKPOINT)
    assert meta["step"] == 30 and set(got) == set(want)
    assert [k for k in want if not torch.equal(got[k], want[k])] == []
    assert any(k.startswith("imitation/students/refit") for k in want)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 31))
    assert not list(run.glob("*.tmp-*"))


GRID = """
import sys
from moil.harness.config import loads_config
from moil.harness.grid import run_grid
run_grid(loads_config(open(sys.argv[1]).read()), sys.argv[2])
"""


@pytest.mark.slow
def test_workers_die_with_their_parent(tmp_path):
    """Fault 6: SIGKILL the parent of a `workers = 2` grid: both workers exit within seconds
    and stop writing their run folders (so nothing races a later --resume)."""
    psutil = pytest.importorskip("psutil")
    config = tmp_path / "c.toml"
    text = CONFIG.replace("steps = 30", "steps = 400").replace("threads = 1", "threads = 1\nworkers = 2")
    config.write_text(text.replace('name = "moil"\nrecipe = "moil"', 'name = "a"\nrecipe = "head"', 1)
                      + '[[arms]]\nname = "b"\nrecipe = "head"\nlr = 2e-3\n')
    out = tmp_path / "grid"
    parent = subprocess.Popen([sys.executable, "-c", GRID, str(config), str(out)], stderr=subprocess.PIPE, text=True)
    runs = [out / "runs" / "itm" / arm / "seed0" for arm in ("a", "b")]
    deadline = time.monotonic() + 180
    while min(steps_logged(r) for r in runs) < 2 and parent.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert parent.poll() is None, parent.stderr.read()
    workers = [p for p in psutil.Process(parent.pid).children(recursive=True) if "python" in p.name().lower()]
    parent.kill()
    parent.wait()
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert alive == [], f"orphaned workers still running: {alive}"
    logged = [steps_logged(r) for r in runs]
    time.sleep(0.5)
    assert [steps_logged(r) for r in runs] == logged


# ----------------------------------------------------------------------------- SIGTERM in-process


def test_sigterm_during_ablate_checkpoints_and_exits_143(tmp_path):
    """Fault 8 for `moil ablate` (and `moil demo`, the same path): SIGTERM mid-run raises
    Terminated (a KeyboardInterrupt), the run checkpoints its last step, the command exits 143;
    --resume then finishes with every step logged once."""
    import threading

    from typer.testing import CliRunner

    from moil.harness.cli import app
    from moil.harness.signals import terminate_as_interrupt

    config = tmp_path / "c.toml"
    config.write_text(CONFIG.replace("steps = 30", "steps = 400").replace("checkpoint_every = 4", "checkpoint_every = 0"))
    out = tmp_path / "grid"
    run = out / "runs" / "itm" / "moil" / "seed0"

    def send_sigterm():
        deadline = time.monotonic() + 60
        while steps_logged(run) < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=send_sigterm, daemon=True).start()
    with terminate_as_interrupt():
        result = CliRunner().invoke(app, ["ablate", "-c", str(config), "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 143, result.output
    done = steps_logged(run)
    assert 3 <= done < 400 and load_checkpoint(run / CHECKPOINT)[1]["step"] == done
    short = config.read_text().replace("steps = 400", f"steps = {done + 2}")
    config.write_text(short)  # more steps is a safe change; fewer than done would be refused
    result = CliRunner().invoke(app, ["ablate", "-c", str(config), "-o", str(out), "--resume"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, done + 3))
