"""The ``moil`` command: train, eval, export, ablate, demo.

Configs are TOML files (every field has a default; see ``moil/harness/configs/``
for the built-in ones). Progress bars show ETA and the live loss; Ctrl-C saves a
checkpoint and exits, ``--resume`` continues.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, Optional

import attrs
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from moil.harness.config import Config, ConfigError, dump_config, load_config, loads_config

app = typer.Typer(
    help="MoIL — momentum imitation learning: train, evaluate and export stored students.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

ConfigOption = typer.Option(None, "--config", "-c", help="TOML config (omit for the defaults).", exists=True, dir_okay=False)


def builtin_config(name: str) -> Config:
    """A config shipped in ``moil/harness/configs/`` (``demo``, ``demo-quick``)."""
    text = resources.files("moil.harness.configs").joinpath(f"{name}.toml").read_text()
    return loads_config(text, f"moil/harness/configs/{name}.toml")


@contextmanager
def progress_reporter() -> Iterator[Callable[[str, int], Callable[[int, dict], None]]]:
    """Rich progress bars: one per run, with ETA and the live task loss."""
    bars = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console, transient=False,
    )

    def start(label: str, total: int) -> Callable[[int, dict], None]:
        task = bars.add_task(label, total=total, loss="…")

        def on_step(step: int, metrics: dict) -> None:
            bars.update(task, completed=step, loss=f"{metrics.get('task_loss', float('nan')):.4f}")

        return on_step

    with bars:
        yield start


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[red]error:[/red] {message}", soft_wrap=True, markup=True)
    raise typer.Exit(code)


def _stdout() -> Console:
    # Wide enough for the table when stdout is a file or a pipe (CI logs).
    return Console(width=None if sys.stdout.isatty() else 150)


def _print_summary(summary: list[dict]) -> None:
    table = Table(title="results (test split)")
    for col in ("task", "arm", "candidate", "test mean ± std", "stored params", "% model", "train s"):
        table.add_column(col)
    for row in summary:
        mean = "—" if row["test_mean"] is None else f"{row['test_mean']:.4f} ± {row['test_std']:.4f}"
        table.add_row(row["task"], row["arm"], row["candidate"] + (" *" if row["primary"] else ""), mean,
                      f"{row['stored_parameters']:,}", f"{row['percent_of_model']:.2f}", f"{row['train_seconds']:.0f}")
    _stdout().print(table)


def _grid(config: Config, out: Path, resume: bool) -> None:
    from moil.harness.grid import run_grid

    try:
        with progress_reporter() as reporter:
            results = run_grid(config, out, reporter=reporter, resume=resume)
    except KeyboardInterrupt:
        console.print(f"\n[yellow]interrupted[/yellow]: the current run saved a checkpoint; continue with --resume --out {out}")
        raise typer.Exit(130) from None
    _print_summary(results["summary"])
    console.print(f"wrote {out / 'results.json'}, {out / 'report.md'} and plots")


@app.command()
def train(
    config: Optional[Path] = ConfigOption,
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (created)."),
    arm: Optional[str] = typer.Option(None, help="Arm of the config to run (default: the first)."),
    task: Optional[str] = typer.Option(None, help="itm or vqa (default: the config's first task)."),
    seed: Optional[int] = typer.Option(None, help="Seed (default: the config's first)."),
    resume: bool = typer.Option(False, help="Continue from the run folder's checkpoint."),
) -> None:
    """Train one recipe: writes config.toml, metrics.jsonl, results.json, checkpoint, students."""
    from moil.harness.build import build_backbone, load_data
    from moil.harness.run import run_one

    cfg = _load(config)
    spec = _arm(cfg, arm)
    task = task or cfg.train.tasks[0]
    if isinstance(spec.lr, dict) and task not in spec.lr:
        _fail(f"arm {spec.name!r} has no lr for task {task!r}; add it to the arm's lr table.")
    lrs = spec.learning_rates(task)
    if len(lrs) > 1:
        _fail(f"arm {spec.name!r} lists several learning rates {lrs} for {task}; `moil train` runs one — "
              "use `moil ablate` to sweep.")
    lr = lrs[0]
    seed = cfg.train.seeds[0] if seed is None else seed
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(dump_config(cfg))
    (out / "run.json").write_text(json.dumps({"arm": spec.name, "task": task, "seed": seed, "lr": lr}))
    data = load_data(cfg)
    backbone = build_backbone(cfg, task, data)
    try:
        with progress_reporter() as reporter:
            result = run_one(cfg, spec, task, seed, lr, backbone, data, out, resume=resume, keep_checkpoint=True,
                             splits=tuple(cfg.train.eval_splits), on_step=reporter(f"{task} · {spec.name} · seed {seed}", cfg.train.steps))
    except KeyboardInterrupt:
        console.print(f"\n[yellow]interrupted[/yellow]: checkpoint saved in {out}; continue with --resume")
        raise typer.Exit(130) from None
    _print_run(result)


@app.command("eval")
def evaluate_run(run: Path = typer.Option(..., "--run", help="A folder made by `moil train`.")) -> None:
    """Evaluate every candidate of a trained run (students, teacher, targets) on val and test."""
    from moil.harness.scoring import score

    cfg, spec, meta, recipe, state, backbone, data = _restore(run)
    _stdout().print_json(json.dumps(score(recipe, state, backbone, cfg, data, meta["task"], ("val", "test"))))


@app.command()
def export(
    run: Path = typer.Option(..., "--run", help="A folder made by `moil train`."),
    format: str = typer.Option("merged", "--format", "-f", help="merged | student | peft"),
    out: Path = typer.Option(..., "--out", "-o", help="Export folder (must not exist, or hold the same kind)."),
    student: Optional[str] = typer.Option(None, help="Which student (default: the first)."),
) -> None:
    """Export a trained student: a merged transformers folder, the compact student, or a PEFT adapter."""
    from moil.export import export_merged, export_peft, save_student

    if format not in ("merged", "student", "peft"):
        _fail(f"--format must be merged, student or peft, got {format!r}")
    cfg, spec, meta, recipe, state, backbone, data = _restore(run)
    students = recipe.students_of(state, backbone)
    if not students:
        _fail(f"arm {spec.name!r} ({spec.recipe}) stores no student; export a moil or lora run.")
    name = student or next(iter(students))
    if name not in students:
        _fail(f"no student {name!r}; this run has {sorted(students)}")
    adapter, params = students[name]
    merged = recipe.candidates(state, backbone)[f"student/{name}"]
    heads = {k: v for k, v in merged.items() if k in backbone.heads}
    try:
        if format == "merged":
            export_merged(backbone.model, backbone.to_model_names(merged), out, overwrite=True)
        elif format == "student":
            save_student(out, adapter, params, heads=heads, extra=meta, overwrite=True)
        else:
            export_peft(out, adapter, params, heads=heads, overwrite=True)
    except (TypeError, ValueError) as err:
        _fail(str(err))
    console.print(f"exported {format} student {name!r} to {out}")


@app.command()
def ablate(
    config: Optional[Path] = ConfigOption,
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    resume: bool = typer.Option(False, help="Reuse finished runs and continue interrupted ones."),
) -> None:
    """Run a grid of arms × tasks × seeds (with per-arm lr sweeps); write results.json, report.md, plots."""
    _grid(_load(config), out, resume)


@app.command()
def demo(
    quick: bool = typer.Option(False, help="A ≤3-minute version (one seed, fewer steps and images)."),
    out: Path = typer.Option(Path("moil-demo"), "--out", "-o", help="Output folder."),
    resume: bool = typer.Option(False, help="Reuse finished runs."),
    steps: Optional[int] = typer.Option(None, hidden=True, help="Override train.steps (smoke tests)."),
    limit: Optional[int] = typer.Option(None, hidden=True, help="Override data.limit (smoke tests)."),
    model: Optional[str] = typer.Option(None, hidden=True, help="Override model.family (smoke tests)."),
) -> None:
    """The main job: MoIL vs LoRA vs full fine-tuning vs head-only on real pretrained parts and real
    images (all-MiniLM-L6-v2 + EfficientNet-Lite0 tokens on MNIST digits), offline."""
    cfg = builtin_config("demo-quick" if quick else "demo")
    if steps or limit or model:
        cfg = attrs.evolve(
            cfg,
            train=attrs.evolve(cfg.train, steps=steps or cfg.train.steps),
            data=attrs.evolve(cfg.data, limit=limit if limit is not None else cfg.data.limit),
            model=attrs.evolve(cfg.model, family=model or cfg.model.family),
        )
    _grid(cfg, out, resume)


# -- helpers -----------------------------------------------------------------
def _load(path: Optional[Path]) -> Config:
    try:
        return load_config(path)
    except ConfigError as err:
        _fail(str(err))


def _arm(cfg: Config, name: Optional[str]):
    if name is None:
        return cfg.arms[0]
    for arm in cfg.arms:
        if arm.name == name:
            return arm
    _fail(f"no arm {name!r} in the config; it has {[a.name for a in cfg.arms]}")


def _restore(run: Path):
    from moil.harness.build import build_backbone, build_recipe, load_data
    from moil.train import CHECKPOINT, load_state

    if not (run / "run.json").exists() or not (run / CHECKPOINT).exists():
        _fail(f"{run} is not a `moil train` folder with a checkpoint (run.json + {CHECKPOINT}).")
    meta = json.loads((run / "run.json").read_text())
    cfg = _load(run / "config.toml")
    spec = _arm(cfg, meta["arm"])
    data = load_data(cfg)
    backbone = build_backbone(cfg, meta["task"], data)
    recipe = build_recipe(spec, meta["task"], meta["lr"], cfg.train.steps)
    state, _ = load_state(run / CHECKPOINT, recipe.init(backbone, seed=meta["seed"]))
    return cfg, spec, meta, recipe, recipe.finalize(state, backbone), backbone, data


def _print_run(result: dict) -> None:
    table = Table(title=f"{result['task']} · {result['arm']} · seed {result['seed']} ({result['metric']})")
    splits = [s for s in ("val", "test") if any(s in c for c in result["candidates"].values())]
    for col in ("candidate", *splits, "stored params"):
        table.add_column(col)
    for name, s in result["candidates"].items():
        table.add_row(name + (" *" if name == result["primary"] else ""),
                      *(f"{s[split][result['metric']]:.4f}" for split in splits), f"{s['stored_parameters']:,}")
    _stdout().print(table)


def main() -> None:
    try:
        app()
    except ConfigError as err:  # pragma: no cover - surfaced by _load in commands
        console.print(f"[red]error:[/red] {err}")
        sys.exit(2)
