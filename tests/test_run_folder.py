"""moil.harness.run_folder and the CLI around it: atomic files, one writer, a manifest that
--resume checks before touching anything, finished runs never overwritten by accident."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from moil.checkpoint.atomic import remove_stale_temps
from moil.harness.cli import app
from moil.harness.run_folder import (
    RunFolderError,
    RunFolderLockedError,
    flat_changes,
    hold,
    plan_run,
    read_json,
    resume_problems,
    run_manifest,
    write_json,
)

runner = CliRunner()

CONFIG = """\
[data]
limit = 40
[model]
family = "tiny"
[train]
steps = {steps}
seeds = [0]
tasks = ["itm"]
eval_splits = ["val"]
[[arms]]
name = "lora"
recipe = "lora"
rank = 2
lr = {lr}
scale = {scale}
"""


def config(tmp_path, name="c.toml", steps=2, lr="1e-3", scale="1.0"):
    path = tmp_path / name
    path.write_text(CONFIG.format(steps=steps, lr=lr, scale=scale))
    return path


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def snapshot(folder) -> dict:
    """Every file under ``folder`` (dotfiles too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-step `moil train` folder (copied by the tests that change it)."""
    tmp = tmp_path_factory.mktemp("finished")
    result = invoke("train", "--config", config(tmp), "--out", tmp / "run")
    assert result.exit_code == 0, result.output
    return tmp / "run"


def copy(folder, tmp_path):
    import shutil

    return shutil.copytree(folder, tmp_path / "run")


# ----------------------------------------------------------------------------- unit laws


def test_flat_changes_names_each_leaf():
    """Law: flat_changes(a, b) lists exactly the leaves that differ, by dotted path."""
    old = {"train": {"lr": 0.001, "steps": 2}, "arms": [{"scale": 1.0}]}
    new = {"train": {"lr": 0.05, "steps": 2}, "arms": [{"scale": 2.0}], "x": 1}
    assert flat_changes(old, new) == [
        "arms[0].scale: 1.0 -> 2.0", "train.lr: 0.001 -> 0.05", "x: '<unset>' -> 1",
    ]
    assert flat_changes(old, old) == []


def test_resume_problems_refuse_numbers_and_allow_the_safe_set():
    """lr, momentum and an arm's scale are refused; more steps, threads, eval_splits are not;
    steps below the checkpoint's step are refused."""
    cfg = {"data": {"limit": 40}, "model": {"family": "tiny"},
           "train": {"steps": 2, "threads": 0, "eval_splits": ["val"]},
           "arms": [{"name": "m", "lr": 1e-3, "momentum": "half-life:2", "scale": 1.0}]}
    old = run_manifest(cfg, "m", "itm", 0, 1e-3, 2, "moil train")
    changed = json.loads(json.dumps(cfg))
    changed["arms"][0].update(momentum="half-life:4", scale=2.0, lr=5e-2)
    changed["train"].update(steps=4, threads=1, eval_splits=["val", "test"])
    problems = resume_problems(old, run_manifest(changed, "m", "itm", 0, 5e-2, 4, "moil train"), 2)
    assert problems == ["arms[m].momentum: 'half-life:2' -> 'half-life:4'", "arms[m].scale: 1.0 -> 2.0",
                        "lr: 0.001 -> 0.05"]
    safe = json.loads(json.dumps(cfg))
    safe["train"].update(steps=4, threads=1)
    assert resume_problems(old, run_manifest(safe, "m", "itm", 0, 1e-3, 4, "moil train"), 2) == []
    short = resume_problems(old, run_manifest(cfg, "m", "itm", 0, 1e-3, 1, "moil train"), 2)
    assert short == ["steps: 1 is below the 2 steps the checkpoint has done"]


def test_torn_or_empty_json_names_the_file(tmp_path):
    """A torn, empty or incomplete JSON file is a RunFolderError naming it, not a JSONDecodeError."""
    path = tmp_path / "results.json"
    for text, what in (("", "is empty"), ('{"steps": 3, "cand', "is not valid JSON"), ("[1]", "holds a JSON list")):
        path.write_text(text)
        with pytest.raises(RunFolderError, match=rf"results\.json {what}"):
            read_json(path)
    path.write_text('{"steps": 3}')
    with pytest.raises(RunFolderError, match=r"results\.json lacks the field\(s\) \['candidates'\]"):
        read_json(path, required=("steps", "candidates"))


def test_atomic_write_leaves_no_temp_and_stale_temps_of_dead_pids_go(tmp_path):
    """write_json leaves only the target; hold() deletes *.tmp-<pid> files of dead processes
    (here and in student folders) but keeps a live process's."""
    write_json(tmp_path / "a.json", {"x": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    (tmp_path / "student-s").mkdir()
    stale = [tmp_path / f"checkpoint.safetensors.tmp-{dead_pid}", tmp_path / "student-s" / f"x.tmp-{dead_pid}"]
    live = tmp_path / f"results.json.tmp-{os.getppid()}"
    for p in (*stale, live):
        p.write_text("partial")
    with hold(tmp_path):
        pass
    assert not any(p.exists() for p in stale) and live.exists()
    assert remove_stale_temps(tmp_path) == []


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    """Another process holding the folder's lock: hold() and `moil train` refuse, naming the pid."""
    script = textwrap.dedent("""
        import sys, time
        from moil.harness.run_folder import hold
        with hold(sys.argv[1]):
            print("held", flush=True)
            time.sleep(60)
    """)
    folder = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", script, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderLockedError, match=rf"{folder} is in use by pid {proc.pid}"), hold(folder):
            pass
        before = snapshot(folder)
        result = invoke("train", "--config", config(tmp_path), "--out", folder)
        assert result.exit_code == 2 and f"in use by pid {proc.pid}" in result.output
        assert snapshot(folder) == before
    finally:
        proc.kill()
        proc.wait()
    with hold(folder):  # released when its holder died
        pass


def test_plan_refuses_a_file_and_a_grid_folder(tmp_path):
    manifest = run_manifest({}, "a", "itm", 0, 1e-3, 2, "moil train")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="is not a folder"):
        plan_run(tmp_path / "file", manifest, resume=False, overwrite=False, checkpoint="c")
    (tmp_path / "grid.json").write_text("{}")
    with pytest.raises(RunFolderError, match="`moil ablate`/`moil demo` folder"):
        plan_run(tmp_path, manifest, resume=False, overwrite=True, checkpoint="c")


# ----------------------------------------------------------------------------- through the CLI


def test_refused_resume_leaves_the_folder_byte_identical(finished, tmp_path):
    """Fault 2 and 3: --resume with lr 1e-3 -> 5e-2 (and a changed LoRA scale) is refused
    naming each field, before anything is written; `moil eval` still reads the folder."""
    run = copy(finished, tmp_path)
    before = snapshot(run)
    result = invoke("train", "--config", config(tmp_path, "x.toml", steps=4, lr="5e-2", scale="2.0"),
                    "--out", run, "--resume")
    assert result.exit_code == 2, result.output
    assert "lr: 0.001 -> 0.05" in result.output and "arms[lora].scale: 1.0 -> 2.0" in result.output
    assert snapshot(run) == before
    assert invoke("eval", "--run", run).exit_code == 0


def test_resume_to_fewer_steps_than_done_is_refused(finished, tmp_path):
    run = copy(finished, tmp_path)
    before = snapshot(run)
    result = invoke("train", "--config", config(tmp_path, "x.toml", steps=1), "--out", run, "--resume")
    assert result.exit_code == 2 and "below the 2 steps the checkpoint has done" in result.output
    assert snapshot(run) == before


def test_resume_with_more_steps_continues_the_run(finished, tmp_path):
    """More train.steps is the documented safe change: the run continues from its checkpoint."""
    run = copy(finished, tmp_path)
    result = invoke("train", "--config", config(tmp_path, "x.toml", steps=3), "--out", run, "--resume")
    assert result.exit_code == 0, result.output
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert json.loads((run / "run.json").read_text())["steps"] == 3
    again = snapshot(run)
    result = invoke("train", "--config", config(tmp_path, "x.toml", steps=3), "--out", run, "--resume")
    assert result.exit_code == 0 and "nothing to do" in result.output
    assert snapshot(run) == again


def test_finished_runs_are_not_overwritten_without_overwrite(finished, tmp_path):
    """Fault 4: `moil train` into a finished folder and `moil ablate -o <train folder>` are
    refused and change nothing; --overwrite trains again."""
    run = copy(finished, tmp_path)
    before = snapshot(run)
    result = invoke("train", "--config", config(tmp_path), "--out", run)
    assert result.exit_code == 2 and "already holds a finished run" in result.output and "--overwrite" in result.output
    result = invoke("ablate", "--config", config(tmp_path), "--out", run)
    assert result.exit_code == 2 and "is a `moil train` run folder" in result.output
    result = invoke("ablate", "--config", config(tmp_path), "--out", run, "--overwrite")
    assert result.exit_code == 2
    assert snapshot(run) == before
    result = invoke("train", "--config", config(tmp_path), "--out", run, "--overwrite")
    assert result.exit_code == 0, result.output
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_grid_folder_needs_resume_or_overwrite_and_a_torn_result_is_named(tmp_path):
    """Fault 4 and 9 for `moil ablate`: a second run into a finished grid is refused; a torn
    per-run results.json makes --resume fail naming that file (no bare JSONDecodeError)."""
    cfg, out = config(tmp_path), tmp_path / "grid"
    assert invoke("ablate", "--config", cfg, "--out", out).exit_code == 0
    before = snapshot(out)
    result = invoke("ablate", "--config", cfg, "--out", out)
    assert result.exit_code == 2 and "already holds a grid" in result.output
    assert snapshot(out) == before
    (done,) = out.glob("runs/*/*/*/results.json")
    done.write_text(done.read_text()[:50])
    result = invoke("ablate", "--config", cfg, "--out", out, "--resume")
    assert result.exit_code == 2 and str(done) in result.output and "not valid JSON" in result.output
    result = invoke("train", "--config", cfg, "--out", out)
    assert result.exit_code == 2 and "not a run folder" in result.output


def test_torn_run_json_gives_an_error_naming_it(finished, tmp_path):
    """An empty run.json: `moil eval` and `moil train --resume` name the file."""
    run = copy(finished, tmp_path)
    (run / "run.json").write_text("")
    result = invoke("eval", "--run", run)
    assert result.exit_code == 2 and "run.json is empty" in result.output
    result = invoke("train", "--config", config(tmp_path), "--out", run, "--resume")
    assert result.exit_code == 2 and "run.json is empty" in result.output


def test_metrics_log_drops_a_torn_last_line_on_resume(tmp_path):
    """A kill mid-line leaves `{"step": 3, "ta`: reopened for resume, the log ends at the last
    whole line even before anything new is written."""
    from moil.harness.metrics_log import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "ta')
    with MetricsLog(path, resume=True):
        pass
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
