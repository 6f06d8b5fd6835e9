"""The ``moil`` command: train, eval, export, ablate, demo.

Configs are TOML files (every field has a default; see ``moil/harness/configs/``
for the built-in ones). Progress bars show ETA and the live loss; Ctrl-C saves a
checkpoint and exits, ``--resume`` continues.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Optional

import attrs
import typer
from rich.markup import escape

from moil.harness.config import Config, ConfigError, dump_config, load_config, loads_config
from moil.harness.display import console, print_run, print_summary, progress_reporter, stdout
from moil.harness.signals import exit_code, terminate_as_interrupt

app = typer.Typer(help="MoIL — momentum imitation learning: train, evaluate and export stored students.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

config_app = typer.Typer(help="Inspect configs: `moil config show [FILE]`.", no_args_is_help=True)
app.add_typer(config_app, name="config")


def _version(value: bool) -> None:
    if value:  # the installed distribution's version
        typer.echo(f"moil {importlib.metadata.version('moil')}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                           help="Print the installed moil version and exit.")) -> None:
    """--version; each command's options follow its name."""


@config_app.command("show")
def config_show(file: Optional[Path] = typer.Argument(None, exists=True, dir_okay=False, help="TOML config (omit: the defaults).")) -> None:
    """Print the resolved config as TOML: defaults filled, each field after a comment saying what it
    means, only the fields that apply (a LoRA arm shows no students). Fields: docs/config.md."""
    from moil.harness.config_reference import show_config

    typer.echo(show_config(_load(file)), nl=False)


ConfigOption = typer.Option(None, "--config", "-c", help="TOML config (omit for the defaults).", exists=True, dir_okay=False)


def builtin_config(name: str) -> Config:
    """A config shipped in ``moil/harness/configs/`` (``demo``, ``demo-quick``)."""
    text = resources.files("moil.harness.configs").joinpath(f"{name}.toml").read_text()
    return loads_config(text, f"moil/harness/configs/{name}.toml")


def _fail(message: str, code: int = 2) -> None:
    # escape: a message quoting TOML ("add a [[arms.students]] table") is text, not rich markup
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, markup=True)
    raise typer.Exit(code)


def _grid(config: Config, out: Path, resume: bool, overwrite: bool = False) -> None:
    from moil.harness.grid import run_grid
    from moil.harness.run_folder import RunFolderError

    try:
        with progress_reporter() as reporter:
            results = run_grid(config, out, reporter=reporter, resume=resume, overwrite=overwrite)
    except (RunFolderError, ConfigError) as err:
        _fail(str(err))
    except KeyboardInterrupt as err:
        console.print(f"\n[yellow]interrupted[/yellow]: the current run saved a checkpoint; continue with --resume --out {out}")
        raise typer.Exit(exit_code(err)) from None
    print_summary(results["summary"])
    console.print(f"wrote {out / 'results.json'}, {out / 'report.md'} and plots")


@app.command()
def train(
    config: Optional[Path] = ConfigOption,
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (created)."),
    arm: Optional[str] = typer.Option(None, help="Arm of the config to run (default: the first)."),
    task: Optional[str] = typer.Option(None, help="itm, vqa, retrieval or nlvr2 (default: the config's first task)."),
    seed: Optional[int] = typer.Option(None, help="Seed (default: the config's first)."),
    resume: bool = typer.Option(False, help="Continue from the run folder's checkpoint (the config must match)."),
    overwrite: bool = typer.Option(False, help="Discard a run already in --out and train again."),
) -> None:
    """Train one recipe: writes run.json (manifest), config.toml, metrics.jsonl, results.json,
    checkpoint, students. Everything is checked before the run folder is touched."""
    from moil.distributed import broadcast, init_world
    from moil.harness.build import build_backbone, device_of, load_data, run_steps
    from moil.harness.run import run_one

    cfg = _load(config)
    spec = _arm(cfg, arm)
    task = task or cfg.train.tasks[0]
    if task not in cfg.train.tasks:
        _fail(f"--task {task!r} is not one of the config's train.tasks {list(cfg.train.tasks)}; pass one of "
              f"those, or add {task!r} to train.tasks in the config (known tasks: itm, vqa, retrieval, nlvr2).")
    if isinstance(spec.lr, dict) and task not in spec.lr:
        _fail(f"arm {spec.name!r} has no lr for task {task!r}; add it to the arm's lr table.")
    lrs = spec.learning_rates(task)
    if len(lrs) > 1:
        _fail(f"arm {spec.name!r} lists several learning rates {lrs} for {task}; `moil train` runs one — "
              "use `moil ablate` to sweep.")
    lr = lrs[0]
    seed = cfg.train.seeds[0] if seed is None else seed
    try:  # under torchrun: join before the model is built; data.batch_size is the global batch
        world = init_world(device_of(cfg), batch_size=cfg.data.batch_size)
    except ValueError as err:
        _fail(str(err))
    try:  # data and model first: a missing folder or column fails before the run folder is touched
        data = load_data(cfg)
        backbone = build_backbone(cfg, task, data)
        steps = run_steps(cfg, data, task)
    except ConfigError as err:  # also a value that needs the model to check (a rank above a target's width)
        _fail(str(err))
    plan = broadcast(_plan_train(cfg, spec, task, seed, lr, steps, out, resume, overwrite) if world.main else None, world)
    if plan == "done":
        console.print(f"{out} already finished its {steps} steps; nothing to do (--overwrite trains it again).")
        return print_run(_read_json(out / "results.json"))
    from moil.harness.threads import intra_op_threads

    try:  # train.threads applies here as in `moil ablate` (0: torch's default)
        with progress_reporter() as reporter, intra_op_threads(cfg.train.threads):
            result = run_one(cfg, spec, task, seed, lr, backbone, data, out, resume=resume, overwrite=overwrite,
                             keep_checkpoint=True, steps=steps, made_by="moil train",
                             before_training=lambda: _write_config(out, cfg),
                             splits=tuple(cfg.train.eval_splits),
                             on_step=reporter(f"{task} · {spec.name} · seed {seed}", steps) if world.main else None)
    except ValueError as err:  # a run folder refused under its lock (RunFolderError)
        _fail(str(err))
    except KeyboardInterrupt as err:
        if world.main:  # torchrun: nothing is saved on the way out (moil.train.train)
            saved = f"checkpoint saved in {out}" if world.size == 1 else f"the last periodic checkpoint in {out}, if any"
            console.print(f"\n[yellow]interrupted[/yellow]: {saved}; continue with --resume")
        raise typer.Exit(exit_code(err)) from None
    if world.main:
        print_run(result)


def _plan_train(cfg: Config, spec, task: str, seed: int, lr: float, steps: int, out: Path, resume: bool,
                overwrite: bool) -> str:
    """Check the run folder and the recipe by reading only (a refusal leaves ``out`` as it was)."""
    from moil.harness.run import check_run

    try:
        return check_run(cfg, spec, task, seed, lr, steps, out, resume=resume, overwrite=overwrite, made_by="moil train")
    except ValueError as err:  # RunFolderError, ConfigError, a checkpoint error: each names the fix
        _fail(str(err))


def _write_config(out: Path, cfg: Config) -> None:
    from moil.harness.run_folder import write_text

    write_text(out / "config.toml", dump_config(cfg))


def _read_json(path: Path, required: tuple[str, ...] = ()) -> dict:
    from moil.harness.run_folder import RunFolderError, read_json

    try:
        return read_json(path, required=required)
    except RunFolderError as err:
        _fail(str(err))


@app.command("eval")
def evaluate_run(run: Path = typer.Option(..., "--run", help="A folder made by `moil train`.")) -> None:
    """Evaluate every candidate of a trained run (students, teacher, targets) on val and test."""
    from moil.harness.scoring import score

    cfg, spec, meta, recipe, state, backbone, data = _restore(run)
    splits = ("val", "test") if cfg.data.train is None else tuple(cfg.train.eval_splits)
    stdout().print_json(json.dumps(score(recipe, state, backbone, cfg, data, meta["task"], splits)))


@app.command()
def export(
    run: Path = typer.Option(..., "--run", help="A `moil train` folder, or a grid's runs/<task>/<arm>/seed<k>."),
    format: str = typer.Option("merged", "--format", "-f", help="merged | student | peft"),
    out: Path = typer.Option(..., "--out", "-o", help="Export folder (must not exist, or hold the same kind)."),
    student: Optional[str] = typer.Option(None, help="Which student (default: the first)."),
) -> None:
    """Export a trained student: a merged transformers folder, the compact student, or a PEFT adapter."""
    from moil.harness.exporting import check_format, checkpoint_students, export_student, grid_run
    from moil.train import CHECKPOINT

    try:
        check_format(format)  # before the model is loaded
        if (run / CHECKPOINT).exists() or not (run / "run.json").exists():  # `moil train` (or refused there)
            cfg, spec, meta, recipe, state, backbone, data = _restore(run)
            students = checkpoint_students(recipe, state, backbone)
        else:  # a grid's run: no checkpoint, the students it kept
            meta = _read_json(run / "run.json", required=("arm", "task", "seed", "lr"))
            cfg, data, backbone, students = grid_run(run, meta)
        name = export_student(cfg, backbone, data, students, format, out, student, meta, meta["arm"])
    except (TypeError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as err:  # each named
        _fail(str(err))
    console.print(f"exported {format} student {name!r} to {out}")


@app.command()
def ablate(
    config: Optional[Path] = ConfigOption,
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    resume: bool = typer.Option(False, help="Reuse finished runs and continue interrupted ones."),
    overwrite: bool = typer.Option(False, help="Discard the grid already in --out and run it again."),
) -> None:
    """Run a grid of arms × tasks × seeds (with per-arm lr sweeps); write results.json, report.md, plots."""
    _grid(_load(config), out, resume, overwrite)


@app.command()
def demo(
    quick: bool = typer.Option(False, help="A ≤3-minute version (one seed, fewer steps and images)."),
    out: Path = typer.Option(Path("moil-demo"), "--out", "-o", help="Output folder."),
    resume: bool = typer.Option(False, help="Reuse finished runs."),
    overwrite: bool = typer.Option(False, help="Discard the demo already in --out and run it again."),
    steps: Optional[int] = typer.Option(None, hidden=True, help="Override train.steps (smoke tests)."),
    limit: Optional[int] = typer.Option(None, hidden=True, help="Override data.limit (smoke tests)."),
    model: Optional[str] = typer.Option(None, hidden=True, help="Override model.family (smoke tests)."),
) -> None:
    """The main job: MoIL vs LoRA vs full fine-tuning vs head-only on real pretrained parts and real
    images (all-MiniLM-L6-v2 + EfficientNet-Lite0 tokens on MNIST digits), offline."""
    cfg = builtin_config("demo-quick" if quick else "demo")
    if steps or limit or model:
        try:
            cfg = attrs.evolve(
                cfg,
                train=attrs.evolve(cfg.train, steps=steps or cfg.train.steps),
                data=attrs.evolve(cfg.data, limit=limit if limit is not None else cfg.data.limit),
                model=attrs.evolve(cfg.model, family=model or cfg.model.family),
            )
        except (TypeError, ValueError) as err:  # the same checks as a config file's
            _fail(f"--steps/--limit/--model: {err}")
    _grid(cfg, out, resume, overwrite)


# -- helpers -----------------------------------------------------------------
def _load(path: Optional[Path]) -> Config:
    from moil.harness.build import device_of

    try:
        cfg = load_config(path)
        device_of(cfg)  # train.device = 'cuda' on a machine without one: refused before anything is written
        return cfg
    except ConfigError as err:
        _fail(str(err))


def _arm(cfg: Config, name: Optional[str]):
    arms = {arm.name: arm for arm in cfg.arms}
    if name is None or name in arms:
        return cfg.arms[0] if name is None else arms[name]
    _fail(f"no arm {name!r} in the config; it has {[a.name for a in cfg.arms]}")


def _restore(run: Path):
    from moil.harness.build import build_backbone, build_recipe, load_data, run_steps
    from moil.train import CHECKPOINT, load_state

    if not (run / "run.json").exists() or not (run / CHECKPOINT).exists():
        _fail(f"{run} is not a `moil train` folder with a checkpoint (run.json + {CHECKPOINT}).")
    meta = _read_json(run / "run.json", required=("arm", "task", "seed", "lr"))
    cfg = _load(run / "config.toml")
    spec = _arm(cfg, meta["arm"])
    try:
        data = load_data(cfg)
        backbone = build_backbone(cfg, meta["task"], data)
        steps = run_steps(cfg, data, meta["task"])
    except ConfigError as err:
        _fail(str(err))
    recipe = build_recipe(spec, meta["task"], meta["lr"], meta.get("steps", steps))
    try:
        state, _ = load_state(run / CHECKPOINT, recipe.init(backbone, seed=meta["seed"]))
    except ValueError as err:  # CorruptCheckpointError / CheckpointMismatchError name the file
        _fail(str(err))
    return cfg, spec, meta, recipe, recipe.finalize(state, backbone), backbone, data


def main() -> None:
    try:
        with terminate_as_interrupt():  # SIGTERM: checkpoint and exit 143, as Ctrl-C does with 130
            app()
    except ConfigError as err:  # pragma: no cover - surfaced by _load in commands
        console.print(f"[red]error:[/red] {err}")
        sys.exit(2)


if __name__ == "__main__":  # `torchrun … -m moil.harness.cli train …`
    main()
