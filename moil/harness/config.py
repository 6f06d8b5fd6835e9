"""Experiment configuration: TOML files ⇄ typed, validated, immutable specs.

Every field has a default, so an empty file is a valid config; unknown keys and
wrong types are refused with the path of the bad value (``$.arms[1].rank``).
The resolved config (all defaults filled in) is saved with every run. What each field
means, and when it applies, is written once, in :mod:`moil.harness.config_help`
(``moil config show`` prints it; ``docs/config.md`` is generated from it).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import attrs
import tomli_w

from moil.harness.config_checks import (
    FieldError,
    check_sources,
    check_student,
    distinct,
    finite_non_negative,
    finite_positive,
    folder_name,
    fraction,
    learning_rate,
    model_fields,
    momentum_spec,
    non_negative_int,
    non_zero_scale,
    positive,
    share,
    splits,
    stream_fits,
)
from moil.harness.config_types import problems_of, structure_converter

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ArmSpec", "Config", "ConfigError", "DataSpec", "ModelSpec", "StudentSpec", "TailDecaySpec", "TrainSpec",
    "load_config", "loads_config", "config_dict", "dump_config", "parse_config",
]

RecipeName = Literal["moil", "lora", "full", "head", "peft-lora", "peft-dora", "peft-pissa"]
ApproxName = Literal["hybrid", "lowrank", "transform"]


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message lists every problem."""


TASKS = ("itm", "vqa", "nlvr2")


@attrs.frozen
class StudentSpec:
    """One MoIL student: approximation, ranks, and how it follows its target."""

    name: str = attrs.field(default="hybrid", validator=folder_name)
    approx: ApproxName = "hybrid"
    rank: int = attrs.field(default=8, validator=positive)
    transform_rank: int | None = attrs.field(default=None, validator=positive)
    side: Literal["input", "output"] = "input"
    momentum: str | float | None = attrs.field(default=None, validator=momentum_spec)
    lr: float | None = attrs.field(default=None, validator=finite_positive)
    solver_steps: int = attrs.field(default=1, validator=non_negative_int)
    refit: Literal["none", "svd", "als"] = "none"
    refit_every: int = attrs.field(default=0, validator=non_negative_int)
    final_fit: bool = False

    def __attrs_post_init__(self) -> None:
        check_student(self)


@attrs.frozen
class TailDecaySpec:
    """The teacher's update beyond ``rank`` decays every ``every`` steps (:class:`moil.recipes.TailDecay`)."""

    rank: int = attrs.field(default=8, validator=positive)
    strength: float = attrs.field(default=1.0, validator=share)
    every: int = attrs.field(default=1, validator=positive)


@attrs.frozen
class ArmSpec:
    """One arm of a comparison: a recipe and its hyper-parameters.

    ``lr`` may be a list: the arm then sweeps it on the validation split (never
    the test split) and uses the best value for every seed. A table gives each
    task its own (``lr = {itm = 3e-4, vqa = [1e-3, 3e-3]}``).
    """

    name: str = attrs.field(default="moil", validator=folder_name)
    recipe: RecipeName = "moil"
    lr: float | list[float] | dict[str, float | list[float]] = attrs.field(
        default=2e-4, validator=learning_rate(TASKS)
    )
    head_lr_scale: float = attrs.field(default=1.0, validator=finite_positive)
    head_lr: float | None = attrs.field(default=None, validator=finite_positive)
    weight_decay: float = attrs.field(default=0.01, validator=finite_non_negative)
    warmup: float = attrs.field(default=0.1, validator=fraction)
    momentum: str | float = attrs.field(default="half-life:20", validator=momentum_spec)
    approx: ApproxName = "lowrank"
    rank: int = attrs.field(default=8, validator=positive)
    scale: float = attrs.field(default=1.0, validator=non_zero_scale)
    students: list[StudentSpec] = attrs.field(factory=lambda: [StudentSpec()])
    seeds: list[int] | None = attrs.field(default=None, validator=attrs.validators.optional(distinct))
    tail_decay: TailDecaySpec | None = None

    def __attrs_post_init__(self) -> None:
        if self.tail_decay is not None and self.recipe not in ("moil", "full"):
            raise FieldError(f"tail_decay shapes a full-rank teacher, but recipe = {self.recipe!r} has none; "
                             "use recipe = 'moil' or 'full', or remove [arms.tail_decay]", "tail_decay")
        names = [s.name for s in self.students]
        if self.recipe == "moil" and not names:
            raise FieldError(
                "students = [] leaves a moil arm nothing to store; add a [[arms.students]] table "
                "(every field has a default) or use recipe = 'full'", "students",
            )
        if len(set(names)) != len(names):
            raise FieldError(f"student names must be unique within an arm, got {names}", "students")
        if self.head_lr is not None and self.recipe == "head":
            raise FieldError(
                f"head_lr = {self.head_lr!r} on recipe = 'head': a head-only arm trains only the heads, at lr; "
                f"set lr = {self.head_lr!r} and remove head_lr", "head_lr",
            )
        if self.head_lr is not None and self.head_lr_scale != 1.0:
            raise FieldError(
                f"head_lr = {self.head_lr!r} and head_lr_scale = {self.head_lr_scale!r} both set the heads' "
                "learning rate; keep one: head_lr (absolute, the same for every arm) or head_lr_scale (× lr)",
                "head_lr",
            )

    def head_scale(self, lr: float) -> float:
        """The heads' learning rate as a multiple of ``lr``: ``head_lr / lr``, else ``head_lr_scale``."""
        return self.head_lr / lr if self.head_lr is not None else self.head_lr_scale

    def learning_rates(self, task: str) -> list[float]:
        """The learning rates this arm tries on ``task`` (one value: no sweep)."""
        lr = self.lr[task] if isinstance(self.lr, dict) else self.lr
        return list(lr) if isinstance(lr, list) else [lr]


@attrs.frozen
class ColumnsSpec:
    """Column names of a data set on disk (see ``docs/your-data.md``)."""

    image: str = "image"
    text: str = "text"
    question: str = "question"
    answers: str = "answers"
    pair: list[str] = attrs.field(factory=lambda: ["left", "right"])
    label: str = "label"
    features: str | None = None
    boxes: str | None = None


@attrs.frozen
class DataSpec:
    dataset: Literal["digits", "fashion", "digit-pairs"] = "digits"
    train: str | None = None
    val: str | None = None
    test: str | None = None
    columns: ColumnsSpec = attrs.field(factory=ColumnsSpec)
    epochs: int = attrs.field(default=0, validator=non_negative_int)
    limit: int = attrs.field(default=0, validator=non_negative_int)
    batch_size: int = attrs.field(default=32, validator=positive)
    eval_batch_size: int = attrs.field(default=250, validator=positive)
    eval_pairs: int = attrs.field(default=2, validator=positive)
    split_seed: int = 0


@attrs.frozen
class PrealignSpec:
    """The shared pre-alignment stage of the digit-pairs benchmark (:mod:`moil.harness.prealign`)."""

    steps: int = attrs.field(default=0, validator=non_negative_int)
    lr: float = attrs.field(default=1e-4, validator=positive)
    new_lr: float = attrs.field(default=1e-3, validator=positive)
    batch_size: int = attrs.field(default=64, validator=positive)
    seed: int = 0


@attrs.frozen
class ModelSpec:
    family: Literal["minilm-efficientnet", "tiny", "auto", "vilt", "clip", "bridgetower", "visualbert",
                    "generic"] = "minilm-efficientnet"
    mlp: bool = False
    pretrained: str | None = None
    targets: list[str] = attrs.field(factory=list)
    heads: list[str] = attrs.field(factory=list)
    model_class: str | None = None
    outputs: dict[str, str] = attrs.field(factory=dict)
    prealign: PrealignSpec = attrs.field(factory=PrealignSpec)

    def __attrs_post_init__(self) -> None:
        model_fields(self)


@attrs.frozen
class TrainSpec:
    steps: int = attrs.field(default=200, validator=positive)
    sweep_steps: int | None = attrs.field(default=None, validator=positive)
    seeds: list[int] = attrs.field(factory=lambda: [0, 1, 2], validator=distinct)
    tasks: list[Literal["itm", "vqa", "retrieval", "nlvr2"]] = attrs.field(factory=lambda: ["itm", "vqa"], validator=distinct)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = attrs.field(default=0, validator=non_negative_int)
    workers: int = attrs.field(default=1, validator=positive)
    checkpoint_every: int = attrs.field(default=0, validator=non_negative_int)
    eval_splits: list[Literal["val", "test"]] = attrs.field(factory=lambda: ["val", "test"], validator=splits)
    eval_every: int = attrs.field(default=0, validator=non_negative_int)


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
        check_sources(self)

    def seeds_of(self, arm: ArmSpec) -> list[int]:
        """The seeds ``arm`` runs: its own ``seeds``, else ``train.seeds``."""
        return self.train.seeds if arm.seeds is None else arm.seeds


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
    try:  # a UTF-8 byte-order mark (Windows editors) is not part of the TOML
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); TOML files are UTF-8 — "
                          "save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).") from None
    return loads_config(text, str(path))


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
