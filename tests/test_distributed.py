"""Many processes under torchrun (gloo on CPU): the world, batch slices, the imitation split by
target, and `moil train` on 2 processes equal to 1 process, killed-and-resumed equal to uninterrupted.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from moil.approx import TRANSFORM_KEYS, Adapter, Hybrid, LowRank, Sharing
from moil.distributed import (
    World,
    check_batch_size,
    check_mean_loss,
    from_env,
    owned_targets,
    shard_batch,
    units,
)
from moil.objectives import ContrastiveRetrieval, ImageTextMatching

CONFIG = """\
[data]
limit = 40
batch_size = {batch}
[model]
family = "tiny"
[train]
steps = {steps}
seeds = [0]
tasks = ["itm"]
threads = 1
checkpoint_every = 1
eval_splits = ["test"]
[[arms]]
name = "moil"
recipe = "moil"
lr = 1e-3
momentum = "half-life:2"
[[arms.students]]
name = "hy"
approx = "hybrid"
rank = 2
refit = "als"
final_fit = true
[[arms.students]]
name = "lr"
approx = "lowrank"
rank = 2
"""
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
MOIL = [sys.executable, "-m", "moil.harness.cli"]


# -- pure parts (no process group) ---------------------------------------------------------
def test_world_from_env_and_checks():
    """torchrun's RANK/WORLD_SIZE give the world; a bad rank is refused, one process by default."""
    assert from_env({}) == World(0, 1)
    assert from_env({"RANK": "1", "WORLD_SIZE": "2"}) == World(1, 2)
    with pytest.raises(ValueError, match="rank < size"):
        World(2, 2)
    with pytest.raises(ValueError, match=r"data.batch_size=6 does not split over 4 processes.*multiple of 4"):
        check_batch_size(6, World(0, 4))
    check_batch_size(8, World(3, 4))


def test_shard_batch_slices_are_contiguous_and_cover_the_batch():
    """Law: concatenating the ranks' slices in rank order gives the global batch back."""
    batch = {"x": torch.arange(12).reshape(6, 2), "y": torch.arange(6), "scale": torch.tensor(2.0)}
    parts = [shard_batch(batch, World(r, 3)) for r in range(3)]
    assert torch.equal(torch.cat([p["x"] for p in parts]), batch["x"])
    assert torch.equal(parts[1]["y"], torch.tensor([2, 3])) and parts[2]["scale"] is batch["scale"]
    with pytest.raises(ValueError, match="does not split over 4"):
        shard_batch(batch, World(0, 4))
    with pytest.raises(ValueError, match="different leading sizes"):
        shard_batch({"x": torch.zeros(4), "y": torch.zeros(2)}, World(0, 2))


def test_contrastive_loss_refused_on_several_processes():
    """In-batch negatives do not split over ranks: refused with the reason; per-example losses pass."""
    check_mean_loss(ContrastiveRetrieval(), World(0, 1))
    check_mean_loss(ImageTextMatching(), World(1, 2))
    with pytest.raises(NotImplementedError, match="negatives"):
        check_mean_loss(ContrastiveRetrieval(), World(1, 2))


def _layers(n: int) -> tuple[list[str], dict[str, torch.Tensor]]:
    targets = [f"l{i}.attn.{p}" for i in range(n) for p in ("query", "key", "value")] + [f"l{i}.out" for i in range(n)]
    base = {}
    for t in targets:
        base[f"{t}.weight"], base[f"{t}.bias"] = torch.randn(4, 4), torch.randn(4)
    return targets, base


def test_units_keep_sharing_groups_whole_and_ranks_partition_them():
    """Law: the ranks' targets are disjoint, cover every target, and no sharing group is split."""
    targets, base = _layers(3)
    shared = Adapter(Hybrid(2), targets, Sharing(TRANSFORM_KEYS))
    alone = Adapter(LowRank(2), targets)
    groups = units([alone, shared])
    assert ("l0.attn.query", "l0.attn.key", "l0.attn.value") in groups and ("l0.out",) in groups
    for size in (1, 2, 3, 6):
        owned = [owned_targets([alone, shared], base, World(r, size)) for r in range(size)]
        assert sum(len(o) for o in owned) == len(targets) and set().union(*owned) == set(targets)
        for unit in groups:
            assert sum(bool(set(unit) & o) for o in owned) == 1
    with pytest.raises(ValueError, match="fewer than the 7 processes"):
        owned_targets([shared], base, World(0, 7))


def test_imitation_shard_local_join_round_trip(tmp_path):
    """Law: join(local_r(state) for r) == state, and each part's update equals the whole update
    restricted to its targets (EMA elementwise, imitation loss a sum over targets)."""
    from moil.momentum import HalfLife
    from moil.recipes import Imitation, Student
    from moil.recipes.task_step import default_optimizer
    from moil.solvers import Gradient

    targets, base = _layers(2)

    class Bb:  # what Imitation.build reads of a backbone: its adapter of an approximation
        def adapter(self, approx):
            return Adapter(approx, targets, Sharing(TRANSFORM_KEYS) if isinstance(approx, Hybrid) else None)

    students = {"hy": Student(Hybrid(2)), "lr": Student(LowRank(2))}
    whole = Imitation.build(students, Bb(), momentum=HalfLife(2.0), optimizer=default_optimizer(1e-2, 10),
                            solver=Gradient())
    teacher = {k: v + 0.1 * torch.randn_like(v) for k, v in base.items()}
    state = whole.init(base, base, seed=0)
    full, _ = whole.update(state, teacher, base)
    parts = []
    for r in range(2):
        adapters = [f.adapter for f in whole.followers.values()]
        part = whole.shard(owned_targets(adapters, base, World(r, 2)))
        local = part.init(base, base, seed=0)
        parts.append(part.update(local, teacher, base)[0])
    joined = Imitation.join(parts)
    for name in full.students:
        assert set(joined.students[name]) == set(full.students[name])
        for k, v in full.students[name].items():
            torch.testing.assert_close(joined.students[name][k], v, rtol=0, atol=1e-6)
    for k, v in full.targets["m0"].target.items():
        assert torch.equal(joined.targets["m0"].target[k], v)


# -- `moil train` under torchrun ---------------------------------------------------------------
def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _train(prefix: list[str], config: Path, out: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([*prefix, "train", "--config", str(config), "--out", str(out), *extra],
                          check=False, capture_output=True, text=True, env=_env(), timeout=240)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _state(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoint.safetensors")


def _checkpoint_step(run: Path) -> int:
    from moil.checkpoint import load_checkpoint

    return int(load_checkpoint(run / "checkpoint.safetensors")[1]["step"])


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc: torchrun starts each worker in a session of
    its own, so killing torchrun's process group leaves the workers running)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill_job(pid: int) -> None:
    """SIGKILL torchrun and every worker it started, as a node failure would."""
    for target in [*_descendants(pid), pid]:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass


_FACTORS = ("lora_a", "lora_b", "transform_up", "transform_down", "transform_down_bias", "transform_up_bias")


def _gauge_free(student: dict) -> dict:
    """What a stored student means, free of its factors' gauge: ``B A``, ``U D`` and the bias
    shift ``U a + c`` per owner, every other tensor as it is."""
    owners: dict[str, dict] = {}
    for key, value in student.items():
        owner, _, name = key.rpartition("::")
        owners.setdefault(owner, {})[name] = value
    out = {}
    for owner, p in owners.items():
        if "lora_a" in p:
            out[f"{owner}::BA"] = p["lora_b"] @ p["lora_a"]
        if "transform_up" in p:
            out[f"{owner}::UD"] = p["transform_up"] @ p["transform_down"]
            out[f"{owner}::shift"] = p["transform_up"] @ p["transform_down_bias"] + p["transform_up_bias"]
        out.update({f"{owner}::{n}": v for n, v in p.items() if n not in _FACTORS})
    return out


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_and_resume_exactly(tmp_path):
    """2 ranks (gloo) = 1 process with the same global batch: teacher, heads, momentum target,
    students and their optimiser moments within 1e-6; a 2-rank run SIGKILLed mid-run and
    resumed ends bitwise equal to the uninterrupted 2-rank run."""
    steps = 6  # the kill must land between the first checkpoint and the end, also on a loaded machine
    config = tmp_path / "run.toml"
    config.write_text(CONFIG.format(batch=4, steps=steps))
    one, two = tmp_path / "one", tmp_path / "two"
    _train(MOIL, config, one)
    moil = shutil.which("moil") or str(Path(sys.executable).parent / "moil")
    _train(TORCHRUN + [moil], config, two)  # the console script under torchrun
    a, b = _state(one), _state(two)
    assert set(a) == set(b)
    assert any(k.startswith("imitation/students/hy/") for k in a) and any("/targets/m0/" in k for k in a)
    for key in a:
        # 2 ranks sum half-batch gradients in another order than one process: rounding, which 6
        # AdamW steps amplify where a gradient is tiny (within 1e-6 on AVX-512, not on AVX2).
        diff = (b[key] - a[key]).abs().max().item()
        assert diff <= 1e-5, (key, diff)
    # The exported students went through the closed-form final fit (ALS), which amplifies
    # the float-summation differences of the all-reduce, and a Hybrid's factors are defined
    # only up to B G, G⁻¹ A (and U, D alike): what they store agrees to 1e-5.
    for name in ("hy", "lr"):
        x, y = (_gauge_free(load_file(r / f"student-{name}" / "student.safetensors")) for r in (one, two))
        assert set(x) == set(y)
        for key in x:
            torch.testing.assert_close(y[key], x[key], rtol=0, atol=1e-5, msg=key)

    # Killed (SIGKILL to the whole torchrun group) once a mid-run checkpoint exists, then resumed.
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*TORCHRUN, "-m", "moil.harness.cli", "train", "--config", str(config), "--out",
                             str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if (killed / "checkpoint.safetensors").exists() and _checkpoint_step(killed) >= 1:
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            _kill_job(proc.pid)
        proc.wait()
    at = _checkpoint_step(killed)
    if at >= steps:
        pytest.fail(f"the run finished (step {at}) before it could be killed; raise steps")
    _train(TORCHRUN + ["-m", "moil.harness.cli"], config, killed, "--resume")
    c = _state(killed)
    assert set(c) == set(b)
    for key in b:
        assert torch.equal(c[key], b[key]), key


def test_train_refuses_a_batch_not_divisible_by_the_world(tmp_path, monkeypatch):
    """data.batch_size = 4 for 3 processes (torchrun's WORLD_SIZE): refused before the process
    group or the run folder is touched, naming the field, the value and the fix."""
    from typer.testing import CliRunner

    from moil.harness.cli import app

    config = tmp_path / "odd.toml"
    config.write_text(CONFIG.format(batch=4, steps=2))
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--out", str(tmp_path / "odd")])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "data.batch_size=4 does not split over 3 processes" in text and "multiple of 3" in text
    assert not (tmp_path / "odd").exists()
