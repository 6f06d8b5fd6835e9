"""Experiment configuration: TOML files ⇄ typed, validated, immutable specs.

Every field has a default, so an empty file is a valid config; unknown keys and
wrong types are refused with the path of the bad value (``$.arms[1].rank``).
The resolved config (all defaults filled in) is saved with every run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import attrs
import tomli_w

from moil.harness.config_checks import (
    FieldError,
    distinct,
    finite_non_negative,
    finite_positive,
    fraction,
    learning_rate,
    momentum_spec,
    non_negative_int,
    non_zero_scale,
    positive,
    problems_of,
    splits,
    stream_fits,
    structure_converter,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ArmSpec", "Config", "ConfigError", "DataSpec", "ModelSpec", "StudentSpec", "TrainSpec",
    "load_config", "loads_config", "config_dict", "dump_config", "parse_config",
]

RecipeName = Literal["moil", "lora", "full", "head", "peft-lora", "peft-dora", "peft-pissa"]
ApproxName = Literal["hybrid", "lowrank", "transform"]


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message lists every problem."""


TASKS = ("itm", "vqa")


@attrs.frozen
class StudentSpec:
    """One MoIL student: approximation, ranks, and how it follows its target."""

    name: str = "hybrid"
    approx: ApproxName = "hybrid"
    rank: int = attrs.field(default=8, validator=positive)
    #: Hybrid only: the transform part's rank (``None`` = ``rank``).
    transform_rank: int | None = attrs.field(default=None, validator=positive)
    side: Literal["input", "output"] = "input"
    #: ``None`` = the arm's momentum; else a momentum spec (see
    #: :func:`moil.harness.momentum_spec.parse_momentum`).
    momentum: str | float | None = attrs.field(default=None, validator=momentum_spec)
    lr: float | None = attrs.field(default=None, validator=finite_positive)
    solver_steps: int = attrs.field(default=1, validator=positive)
    refit: Literal["none", "svd", "als"] = "none"
    #: Refit with ``refit`` every this many steps (0 = never).
    refit_every: int = attrs.field(default=0, validator=non_negative_int)
    final_fit: bool = False

    def __attrs_post_init__(self) -> None:
        if self.refit == "none" and (self.refit_every or self.final_fit):
            field = "refit_every" if self.refit_every else "final_fit"
            raise FieldError(
                f"{field} = {getattr(self, field)!r} needs a closed-form solver, but refit = 'none'; "
                "set refit = 'svd' or 'als'", field,
            )
        if self.transform_rank is not None and self.approx != "hybrid":
            raise FieldError(
                f"transform_rank = {self.transform_rank} is only read by approx = 'hybrid', got "
                f"approx = {self.approx!r}; remove transform_rank (a transform's rank is rank)",
                "transform_rank",
            )


@attrs.frozen
class ArmSpec:
    """One arm of a comparison: a recipe and its hyper-parameters.

    ``lr`` may be a list: the arm then sweeps it on the validation split (never
    the test split) and uses the best value for every seed. A table gives each
    task its own (``lr = {itm = 3e-4, vqa = [1e-3, 3e-3]}``).
    """

    name: str = "moil"
    recipe: RecipeName = "moil"
    lr: float | list[float] | dict[str, float | list[float]] = attrs.field(
        default=2e-4, validator=learning_rate(TASKS)
    )
    head_lr_scale: float = attrs.field(default=1.0, validator=finite_positive)
    weight_decay: float = attrs.field(default=0.01, validator=finite_non_negative)
    #: Learning-rate warm-up as a fraction of the run's steps, in [0, 1).
    warmup: float = attrs.field(default=0.1, validator=fraction)
    momentum: str | float = attrs.field(default="half-life:20", validator=momentum_spec)
    # LoRA / PEFT arms: the approximation and rank (set the rank for equal stored size).
    approx: ApproxName = "lowrank"
    rank: int = attrs.field(default=8, validator=positive)
    scale: float = attrs.field(default=1.0, validator=non_zero_scale)
    students: list[StudentSpec] = attrs.field(factory=lambda: [StudentSpec()])

    def __attrs_post_init__(self) -> None:
        names = [s.name for s in self.students]
        if self.recipe == "moil" and not names:
            raise FieldError(
                "students = [] leaves a moil arm nothing to store; add a [[arms.students]] table "
                "(every field has a default) or use recipe = 'full'", "students",
            )
        if len(set(names)) != len(names):
            raise FieldError(f"student names must be unique within an arm, got {names}", "students")

    def learning_rates(self, task: str) -> list[float]:
        """The learning rates this arm tries on ``task`` (one value: no sweep)."""
        lr = self.lr[task] if isinstance(self.lr, dict) else self.lr
        return list(lr) if isinstance(lr, list) else [lr]


@attrs.frozen
class ColumnsSpec:
    """Column names of a data set on disk (see ``docs/your-data.md``)."""

    #: The image column (an imagefolder's ``file_name`` becomes ``image``).
    image: str = "image"
    #: The caption (ITM, retrieval).
    text: str = "text"
    #: The question and its answers (VQA): a string, or a list of strings whose
    #: soft score is ``min(1, count / 3)``.
    question: str = "question"
    answers: str = "answers"


@attrs.frozen
class DataSpec:
    dataset: Literal["digits", "fashion"] = "digits"
    #: Data from disk instead of the demo set: each a ``save_to_disk`` folder, an image
    #: folder with ``metadata.jsonl``/``metadata.csv``, or a ``.jsonl``/``.csv`` of image paths.
    train: str | None = None
    val: str | None = None
    test: str | None = None
    columns: ColumnsSpec = attrs.field(factory=ColumnsSpec)
    #: Passes over ``train`` (0 = run ``train.steps`` steps); sets the run's length.
    epochs: int = attrs.field(default=0, validator=non_negative_int)
    #: Images kept per split (0 = all): a smaller run for smoke tests.
    limit: int = attrs.field(default=0, validator=non_negative_int)
    batch_size: int = attrs.field(default=32, validator=positive)
    eval_batch_size: int = attrs.field(default=250, validator=positive)
    split_seed: int = 0


@attrs.frozen
class ModelSpec:
    #: ``minilm-efficientnet``: VisualBERT on the real all-MiniLM-L6-v2 weights with
    #: EfficientNet-Lite0 grid tokens; ``tiny``: a random-init small one (tests).
    #: With ``pretrained``: ``auto`` (from the folder's ``config.model_type``) or a family
    #: of :mod:`moil.backbones` (``vilt``, ``clip``, ``bridgetower``).
    family: Literal["minilm-efficientnet", "tiny", "auto", "vilt", "clip", "bridgetower"] = "minilm-efficientnet"
    mlp: bool = False
    #: A ``save_pretrained`` folder (model + processor) or a hub id you have.
    pretrained: str | None = None
    #: Target patterns replacing the family's q/k/v default (regexes over layer names).
    targets: list[str] = attrs.field(factory=list)
    #: More parameters trained and stored with the task head (names or module paths).
    heads: list[str] = attrs.field(factory=list)


@attrs.frozen
class TrainSpec:
    steps: int = attrs.field(default=200, validator=positive)
    #: Steps of each learning-rate sweep run (``None`` = ``steps``).
    sweep_steps: int | None = attrs.field(default=None, validator=positive)
    seeds: list[int] = attrs.field(factory=lambda: [0, 1, 2], validator=distinct)
    tasks: list[Literal["itm", "vqa", "retrieval"]] = attrs.field(factory=lambda: ["itm", "vqa"], validator=distinct)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    #: ``auto`` = CUDA when available, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: torch intra-op threads per run (0 = torch's default, or cores ÷ workers).
    #: Results depend on it in the last bits, which short runs can amplify: fix it
    #: (e.g. 1) to reproduce a table exactly.
    threads: int = attrs.field(default=0, validator=non_negative_int)
    #: Runs trained at once, each in its own process (1 = in this process).
    workers: int = attrs.field(default=1, validator=positive)
    #: Also checkpoint every this many steps (0 = only when a run ends or is stopped):
    #: bounds what a killed worker loses in long runs.
    checkpoint_every: int = attrs.field(default=0, validator=non_negative_int)
    #: Splits every (non-sweep) run is scored on; sweeps always use ``val``.
    eval_splits: list[Literal["val", "test"]] = attrs.field(factory=lambda: ["val", "test"], validator=splits)


@attrs.frozen
class Config:
    data: DataSpec = attrs.field(factory=DataSpec)
    model: ModelSpec = attrs.field(factory=ModelSpec)
    train: TrainSpec = attrs.field(factory=TrainSpec)
    arms: list[ArmSpec] = attrs.field(factory=lambda: [ArmSpec()])

    def __attrs_post_init__(self) -> None:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        for arm in self.arms:
            if isinstance(arm.lr, dict) and (missing := [t for t in self.train.tasks if t not in arm.lr]):
                raise ValueError(f"arm {arm.name!r} must give an lr for task(s) {missing} in its lr table")
        if not self.train.seeds:
            raise ValueError("train.seeds is empty; give at least one seed, e.g. seeds = [0]")
        stream_fits(self.data.limit, self.data.batch_size, self.train.tasks)
        _check_sources(self)


def _check_sources(config: Config) -> None:
    """A pretrained folder goes with data from disk, the demo model with the demo data."""
    model, data = config.model, config.data
    demo_family = model.family in ("minilm-efficientnet", "tiny")
    if model.pretrained is not None and demo_family:
        raise ValueError(
            f"model.pretrained = {model.pretrained!r} must go with family = 'auto' (or 'vilt', 'clip', "
            f"'bridgetower'), got family = {model.family!r}; add family = \"auto\" to [model]"
        )
    if model.pretrained is None and not demo_family:
        raise ValueError(
            f"model.family = {model.family!r} must be loaded from a folder: set model.pretrained = "
            "'path/to/save_pretrained-folder', or use family 'minilm-efficientnet' / 'tiny' for the demo"
        )
    if (data.train is None) != (model.pretrained is None):
        raise ValueError(
            "data.train and model.pretrained must be set together: a pretrained folder reads data from "
            "disk (data.train = 'path'), the demo model reads the demo data (data.dataset)"
        )
    if "retrieval" in config.train.tasks and model.pretrained is None:
        raise ValueError("train.tasks 'retrieval' must run on a dual encoder: set model.pretrained (CLIP)")


_converter = structure_converter()


def parse_config(raw: dict[str, Any], source: str = "<config>") -> Config:
    """A :class:`Config` from a plain dict (e.g. parsed TOML), with readable errors."""
    try:
        return _converter.structure(raw, Config)
    except Exception as err:  # cattrs raises exception groups; flatten them
        raise ConfigError(f"{source}: invalid config:\n  " + "\n  ".join(problems_of(err))) from None


def loads_config(text: str, source: str = "<config>") -> Config:
    """A :class:`Config` from TOML text."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: not valid TOML: {err}") from None
    return parse_config(raw, source)


def load_config(path: str | Path | None) -> Config:
    """Read a TOML config; ``None`` gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file; write one (every field has a default) or omit --config.")
    return loads_config(path.read_text(), str(path))


def config_dict(config: Config) -> dict[str, Any]:
    """The resolved config as plain data (``None`` fields omitted)."""
    return _drop_none(_converter.unstructure(config))


def dump_config(config: Config) -> str:
    """The resolved config as TOML (``None`` fields omitted: TOML has no null)."""
    return tomli_w.dumps(config_dict(config))


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value
