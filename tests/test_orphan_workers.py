"""Orphaned torchrun workers still own their run folder.

torchrun starts each worker in a session of its own, so SIGKILL to torchrun alone leaves
its workers training and checkpointing into the run folder. Law: while they live, a resume
into that folder is refused — naming the folder, the writing rank's pid and the fix — and
leaves the folder as the orphans write it; once the error's fix stopped them, the resume completes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from test_distributed import CONFIG, TORCHRUN, _checkpoint_step, _descendants, _env

#: Every process a test starts inherits this variable (value: the test's own tag), so the
#: teardown finds them all by their environment — even workers reparented away from torchrun.
TAG = "MOIL_TEST_ORPHAN_TAG"


def _tagged(tag: str) -> list[int]:
    """Live processes whose environment holds ``TAG=tag``."""
    needle, out = f"{TAG}={tag}".encode(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0") and _alive(int(entry.name)):
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def _alive(pid: int) -> bool:
    """``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_gone(pids: list[int], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids), f"processes {pids} still run after {seconds} s"


@pytest.fixture
def tag():
    """A fresh tag; on teardown every process carrying it is SIGKILLed, pass or fail."""
    tag = uuid.uuid4().hex
    yield tag
    for _ in range(3):  # a dying torchrun may start a worker while we kill
        pids = _tagged(tag)
        if not pids:
            break
        _kill(pids)
        _wait_gone(pids)


def _torchrun(config: Path, out: Path, tag: str, *extra: str, log: Path) -> subprocess.Popen:
    with log.open("w") as sink:
        return subprocess.Popen([*TORCHRUN, "-m", "moil.harness.cli", "train", "--config", str(config), "--out",
                                 str(out), *extra], stdout=sink, stderr=subprocess.STDOUT,
                                env={**_env(), TAG: tag}, start_new_session=True)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 120) -> tuple[int, str]:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill([*_descendants(proc.pid), proc.pid])
        proc.wait()
        pytest.fail(f"torchrun did not finish in {timeout} s:\n{log.read_text()[-3000:]}")
    return code, log.read_text()


@pytest.mark.slow
def test_resume_is_refused_while_orphaned_workers_write_the_folder(tmp_path, tag):
    """Law: torchrun SIGKILLed alone -> a `--resume` under torchrun is refused (exit != 0, the folder,
    the writer's pid and `kill <pid>` named), nothing in the folder changes hands; after `kill <pid>`
    every orphan exits and the same resume completes."""
    steps = 400  # the orphans must outlive the refused resume; they are killed long before the end
    config = tmp_path / "run.toml"
    config.write_text(CONFIG.format(batch=4, steps=steps))
    run = tmp_path / "run"
    first = _torchrun(config, run, tag, log=tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 120
        while first.poll() is None and time.monotonic() < deadline:
            if (run / "checkpoint.safetensors").exists() and _checkpoint_step(run) >= 1:
                break
            time.sleep(0.05)
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        workers = _descendants(first.pid)
    finally:
        os.kill(first.pid, signal.SIGKILL)  # torchrun alone: its workers are in sessions of their own
        first.wait()
    writer = int((run / ".lock").read_text())
    assert writer in workers and len(workers) == 2, (writer, workers)
    assert all(_alive(w) for w in workers), "the premise: torchrun's workers outlive it"
    manifest, settings = (run / "run.json").read_bytes(), (run / "config.toml").read_bytes()
    at = _checkpoint_step(run)

    # A second writer is refused while the orphans live, with a clear error.
    code, output = _finish(_torchrun(config, run, tag, "--resume", log=tmp_path / "refused.log"),
                           tmp_path / "refused.log")
    assert all(_alive(w) for w in workers), "the orphans were still training during the refused resume"
    text = " ".join(output.split())
    assert code != 0, text[-3000:]
    assert f"run folder {run} is in use by pid {writer}" in text, text[-3000:]
    assert f"stop it (`kill {writer}`; after a SIGKILL to torchrun, its workers may still run)" in text, text[-3000:]
    # ... and the folder is the orphans' still: the refusal wrote nothing, they kept training.
    assert int((run / ".lock").read_text()) == writer
    assert (run / "run.json").read_bytes() == manifest and (run / "config.toml").read_bytes() == settings
    assert not (run / "results.json").exists()
    deadline = time.monotonic() + 30  # checkpoint_every = 1: a live writer moves the checkpoint on
    while _checkpoint_step(run) <= at and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _checkpoint_step(run) > at, "the orphans stopped training"

    # The error's fix, `kill <pid>` (SIGTERM) to the writer, ends every orphan (the other rank
    # fails in its next collective); then the resume completes (a shorter run: `steps` may change).
    os.kill(writer, signal.SIGTERM)
    _wait_gone(workers, seconds=30)
    at = _checkpoint_step(run)
    config.write_text(CONFIG.format(batch=4, steps=at + 1))
    code, output = _finish(_torchrun(config, run, tag, "--resume", log=tmp_path / "resumed.log"),
                           tmp_path / "resumed.log")
    assert code == 0, output[-3000:]
    assert _checkpoint_step(run) == at + 1 and (run / "results.json").exists()
    assert int((run / ".lock").read_text()) not in workers
