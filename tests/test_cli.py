"""The `moil` command end to end on a reduced size: demo, report, train → eval → export, resume, errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from moil.harness.cli import app

runner = CliRunner()
SMALL = ["--model", "tiny", "--steps", "3", "--limit", "40"]


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = invoke("demo", "--quick", "--out", out, *SMALL)
    assert result.exit_code == 0, result.output
    return out


def test_demo_writes_results_report_and_plots(demo_dir):
    """`moil demo --quick` writes the resolved config, results.json with every arm, report.md, plots."""
    results = json.loads((demo_dir / "results.json").read_text())
    arms = {row["arm"] for row in results["summary"]}
    assert arms == {"head-only", "lora", "moil"}
    candidates = {row["candidate"] for row in results["summary"] if row["arm"] == "moil"}
    assert {"student/hybrid-k4+als", "teacher", "target/m0"} <= candidates
    assert (demo_dir / "config.toml").exists()
    for plot in ("curves-itm.png", "distance-itm.png", "spectrum-itm.png"):
        assert (demo_dir / plot).stat().st_size > 1000, plot
    for run in results["runs"]:
        assert (demo_dir / run["folder"] / "metrics.jsonl").exists()


def test_report_table_equals_results_json(demo_dir):
    """Every number in report.md's table is the one in results.json's summary."""
    results = json.loads((demo_dir / "results.json").read_text())
    lines = (demo_dir / "report.md").read_text().splitlines()
    header = [c.strip() for c in next(line for line in lines if line.startswith("| task |")).strip("|").split("|")]
    rows = [line for line in lines if line.startswith(("| itm (", "| vqa ("))]
    summary = [r for r in results["summary"]]
    assert len(rows) == len(summary)
    for line, row in zip(rows, summary):
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        assert cells["arm"] == row["arm"]
        assert float(re.match(r"[\d.]+", cells["test (mean ± std)"]).group()) == pytest.approx(row["test_mean"], abs=5e-5)
        if row["val_mean"] is None:
            assert "val" not in cells
        else:
            assert float(cells["val"]) == pytest.approx(row["val_mean"], abs=5e-5)
        assert int(cells["stored params"].replace(",", "")) == row["stored_parameters"]
        assert float(cells["% of model"]) == pytest.approx(row["percent_of_model"], abs=5e-3)


def test_report_draws_without_pyplot_or_a_backend_switch(demo_dir, tmp_path):
    """Writing the report (in a fresh process) imports no pyplot and leaves matplotlib's
    backend setting as it found it: figures are ``matplotlib.figure.Figure`` objects."""
    out = shutil.copytree(demo_dir, tmp_path / "copy")
    for plot in out.glob("*.png"):
        plot.unlink()  # drawn again below
    code = (
        "import json, sys, matplotlib\n"
        "from pathlib import Path\n"
        "before = dict.__getitem__(matplotlib.rcParams, 'backend')\n"
        "from moil.harness.report import write_report\n"
        f"out = Path({str(out)!r})\n"
        "write_report(json.loads((out / 'results.json').read_text()), out)\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "assert dict.__getitem__(matplotlib.rcParams, 'backend') == before\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (out / "curves-itm.png").stat().st_size > 1000


def test_demo_resume_reuses_finished_runs(demo_dir):
    """--resume on a finished folder reruns nothing: the per-run results are unchanged."""
    before = json.loads((demo_dir / "results.json").read_text())["runs"]
    result = invoke("demo", "--quick", "--out", demo_dir, "--resume", *SMALL)
    assert result.exit_code == 0, result.output
    after = json.loads((demo_dir / "results.json").read_text())["runs"]
    assert [r["train_seconds"] for r in after] == [r["train_seconds"] for r in before]


def test_train_eval_export(tmp_path):
    """`moil train` makes a run folder that `moil eval` and `moil export` (merged, student, peft) read."""
    config = tmp_path / "run.toml"
    config.write_text(
        '[data]\nlimit = 40\n[model]\nfamily = "tiny"\n[train]\nsteps = 2\nseeds = [0]\ntasks = ["itm"]\n'
        '[[arms]]\nname = "lora"\nrecipe = "lora"\nrank = 2\nlr = 1e-3\n'
    )
    run = tmp_path / "run"
    result = invoke("train", "--config", config, "--out", run)
    assert result.exit_code == 0, result.output
    for name in ("config.toml", "metrics.jsonl", "results.json", "checkpoint.safetensors", "student-student"):
        assert (run / name).exists(), name
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    result = invoke("eval", "--run", run)
    assert result.exit_code == 0 and "student/student" in result.output
    trained = json.loads((run / "results.json").read_text())["candidates"]["student/student"]["test"]["accuracy"]
    assert json.loads(result.output)["student/student"]["test"]["accuracy"] == pytest.approx(trained)
    for fmt, marker in (("merged", "config.json"), ("student", "student.json"), ("peft", "adapter_config.json")):
        result = invoke("export", "--run", run, "--format", fmt, "--out", tmp_path / fmt)
        assert result.exit_code == 0, result.output
        assert (tmp_path / fmt / marker).exists()


def test_cli_errors_are_clear(tmp_path):
    """A bad config and a folder that is not a run give exit code 2 and say what is wrong."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nsteps = -1\n")
    result = invoke("train", "--config", bad, "--out", tmp_path / "x")
    assert result.exit_code == 2 and "steps must be > 0" in result.output
    result = invoke("eval", "--run", tmp_path)
    assert result.exit_code == 2 and "not a `moil train` folder" in result.output


@pytest.mark.slow
def test_demo_quick_on_the_real_model(tmp_path):
    """The main job's real parts (all-MiniLM-L6-v2 + EfficientNet-Lite0 tokens) run end to end, reduced."""
    result = invoke("demo", "--quick", "--out", tmp_path, "--steps", "2", "--limit", "40")
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["runs"][0]["model_parameters"] > 20_000_000


def test_a_grid_run_exports_from_its_kept_students(demo_dir, tmp_path):
    """`moil demo`/`moil ablate` keep every run's students: `moil export --run <out>/runs/<task>/<arm>/seed<k>`
    rebuilds the base from the grid's config and writes a merged folder the model's own transformers
    class loads, whose targets are the student merged into the base; an arm without a student is named."""
    import transformers
    from safetensors.torch import load_file

    from moil.export import load_student
    from moil.harness.build import build_backbone, load_data
    from moil.harness.config import load_config

    run = demo_dir / "runs" / "itm" / "moil" / "seed0"
    assert not (run / "checkpoint.safetensors").exists() and list(run.glob("student-*"))
    result = invoke("export", "--run", run, "--format", "merged", "--out", tmp_path / "merged")
    assert result.exit_code == 0, result.output
    arch = json.loads((tmp_path / "merged" / "config.json").read_text())["architectures"][0]
    model = getattr(transformers, arch).from_pretrained(tmp_path / "merged")
    config = load_config(demo_dir / "config.toml")
    backbone = build_backbone(config, "itm", load_data(config))
    assert type(model) is type(backbone.model)
    saved = load_student(next(run.glob("student-*")), base=backbone.base())
    want = backbone.to_model_names({**saved.adapter.merge(saved.params, backbone.base()), **saved.heads})
    exported = load_file(tmp_path / "merged" / "model.safetensors")
    for key, value in want.items():
        torch.testing.assert_close(exported[key], value, rtol=0, atol=0)
    lora = demo_dir / "runs" / "itm" / "lora" / "seed0"
    for fmt, marker in (("peft", "adapter_config.json"), ("student", "student.json")):
        result = invoke("export", "--run", lora, "--format", fmt, "--out", tmp_path / fmt)
        assert result.exit_code == 0 and (tmp_path / fmt / marker).exists(), result.output
    result = invoke("export", "--run", demo_dir / "runs" / "itm" / "head-only" / "seed0", "--out", tmp_path / "h")
    assert result.exit_code == 2 and "stores no student" in result.output
    result = invoke("export", "--run", demo_dir / "runs" / "itm", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "not a `moil train` folder" in result.output


def test_peft_export_names_the_pretrained_folder(tmp_path, monkeypatch):
    """With [model] pretrained, `moil export -f peft` records that folder (absolute) as
    base_model_name_or_path, from a `moil train` folder and from a grid's run alike: PEFT loads the
    adapter onto the model read from there, giving the merged export's weights."""
    pytest.importorskip("datasets")
    peft = pytest.importorskip("peft")
    from PIL import Image
    from safetensors.torch import load_file
    from transformers import ViltForImageAndTextRetrieval

    from moil.harness.data import DIGIT_NAMES, load_digits_5k
    from moil.testing.folders import save_tiny_folder

    monkeypatch.chdir(tmp_path)  # paths in the config are relative to where moil runs
    save_tiny_folder("vilt", "my-vilt", ["a", "photo", "of", "the", "digit", *DIGIT_NAMES])
    digits = load_digits_5k(seed=0)["train"]
    Path("images").mkdir()
    with open("images/metadata.jsonl", "w") as rows:
        for i in range(8):
            Image.fromarray(digits.images[i].numpy()).save(f"images/{i}.png")
            text = f"a photo of the digit {DIGIT_NAMES[int(digits.labels[i])]}"
            rows.write(json.dumps({"file_name": f"{i}.png", "text": text}) + "\n")
    Path("run.toml").write_text(
        '[model]\npretrained = "my-vilt"\nfamily = "auto"\n[data]\ntrain = "images"\nval = "images"\n'
        'batch_size = 4\n[train]\nsteps = 1\nseeds = [0]\ntasks = ["itm"]\neval_splits = ["val"]\n'
        '[[arms]]\nname = "lora"\nrecipe = "lora"\nrank = 2\nlr = 1e-2\n'
    )
    assert invoke("train", "--config", "run.toml", "--out", "run").exit_code == 0
    assert invoke("ablate", "--config", "run.toml", "--out", "grid").exit_code == 0
    for run in ("run", "grid/runs/itm/lora/seed0"):
        for fmt in ("peft", "merged"):
            result = invoke("export", "--run", run, "--format", fmt, "--out", f"{run}-{fmt}")
            assert result.exit_code == 0, result.output
        adapter = json.loads(Path(f"{run}-peft/adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == str((tmp_path / "my-vilt").resolve())
        base = ViltForImageAndTextRetrieval.from_pretrained(adapter["base_model_name_or_path"])
        merged = peft.PeftModel.from_pretrained(base, f"{run}-peft").merge_and_unload()
        exported = load_file(f"{run}-merged/model.safetensors")
        state = merged.state_dict()
        assert set(state) == set(exported)
        for key, value in state.items():
            torch.testing.assert_close(value, exported[key], rtol=1e-5, atol=1e-6)
