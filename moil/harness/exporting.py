"""``moil export``: a run's student as a merged transformers folder, a compact student, or a PEFT adapter.

Two kinds of run folder can be exported:

* a ``moil train`` folder (``run.json``, ``config.toml``, the checkpoint): the students
  come from the checkpoint's final state;
* a run of a grid (``moil ablate`` / ``moil demo``: ``<out>/runs/<task>/<arm>/seed<k>``
  or ``<out>/sweep/<task>/<arm>/lr<x>``), which keeps no checkpoint: the students come
  from its ``student-<name>/`` folders, the config from the grid's ``<out>/config.toml``.
  The base model is rebuilt from that config, as the run built it (the same pretrained
  weights, or the seeded ``tiny`` model); only ``full``/``head``/``peft-*`` arms, which
  store no student, cannot be exported.

Every format records where the base came from: ``merged`` writes the processor of a
``pretrained`` folder next to the weights (the folder loads as the original did, with
the model's own ``…For<Task>`` class), ``peft`` sets ``base_model_name_or_path`` to the
pretrained folder (made absolute) or hub id, ``student`` the same as its ``base_model``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moil.harness.config import Config, ConfigError, load_config

__all__ = [
    "FORMATS", "base_model_of", "check_format", "checkpoint_students", "export_student", "grid_config_path", "grid_run",
]

FORMATS = ("merged", "student", "peft")

#: ``{name: (adapter, params, heads)}``: the students of a run, as each format needs them.
Students = dict[str, tuple[Any, dict, dict]]


def base_model_of(config: Config) -> str | None:
    """The base a run adapted, as outside tools name it: a local ``pretrained`` folder as an
    absolute path, a hub id as it is, ``None`` for the demo model (built, not loaded)."""
    pretrained = config.model.pretrained
    if pretrained is None:
        return None
    return str(Path(pretrained).resolve()) if Path(pretrained).exists() else pretrained


def check_format(fmt: str) -> None:
    """Refuse an export format that is not one of :data:`FORMATS`, naming them."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")


def checkpoint_students(recipe: Any, state: Any, backbone: Any) -> Students:
    """The students of a finished recipe state, each with its trained heads."""
    candidates = recipe.candidates(state, backbone)
    return {
        name: (adapter, params, {k: v for k, v in candidates[f"student/{name}"].items() if k in backbone.heads})
        for name, (adapter, params) in recipe.students_of(state, backbone).items()
    }


def grid_config_path(run: Path) -> Path:
    """The config of a grid's run folder ``<out>/runs/<task>/<arm>/seed<k>``: ``<out>/config.toml``."""
    parents = run.resolve().parents
    if len(parents) > 3 and parents[2].name in ("runs", "sweep") and (parents[3] / "config.toml").is_file():
        return parents[3] / "config.toml"
    raise ConfigError(
        f"{run} has no checkpoint and is not a grid's run folder <out>/runs/<task>/<arm>/seed<k> with "
        "<out>/config.toml; pass a folder made by `moil train`, or one of a `moil ablate` / `moil demo` grid."
    )


def grid_run(run: Path, meta: dict) -> tuple[Config, Any, Any, Students]:
    """``(config, data, backbone, students)`` of a grid's run folder, from its kept students."""
    from moil.export import load_student
    from moil.harness.build import build_backbone, load_data

    config = load_config(grid_config_path(run))
    data = load_data(config)
    backbone = build_backbone(config, meta["task"], data)
    students = {}
    for folder in sorted(run.glob("student-*")):
        saved = load_student(folder, base=backbone.base())
        students[folder.name.removeprefix("student-")] = (saved.adapter, saved.params, saved.heads)
    return config, data, backbone, students


def export_student(config: Config, backbone: Any, data: Any, students: Students, fmt: str, out: Path,
                   name: str | None, meta: dict, arm: str) -> str:
    """Write student ``name`` (default: the first) of a run to ``out`` in format ``fmt``; its name."""
    from moil.export import export_merged, export_peft, save_student

    check_format(fmt)
    if not students:
        raise ValueError(f"arm {arm!r} stores no student (full, head and peft-* arms keep none); export a moil or lora run.")
    name = name or next(iter(students))
    if name not in students:
        raise ValueError(f"--student {name!r}: this run has {sorted(students)}; pass one of those")
    adapter, params, heads = students[name]
    from moil.harness.run_folder import check_apart, inputs_of

    check_apart(out, inputs_of(config), "--out", around=True)  # never replace the model or data it came from
    base = base_model_of(config)
    if fmt == "merged":
        merged = {**adapter.merge(params, backbone.base()), **heads}
        export_merged(backbone.model, backbone.to_model_names(merged), out, overwrite=True)
        if config.model.pretrained is not None:  # the folder loads as the original did: processor too
            data.processor.save_pretrained(out)
    elif fmt == "student":
        save_student(out, adapter, params, heads=heads, base_model=base, extra=meta, overwrite=True)
    else:
        export_peft(out, adapter, params, heads=heads, base_model_name_or_path=base, overwrite=True)
    return name
