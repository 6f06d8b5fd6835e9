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
import cattrs
import tomli_w

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


def _positive(instance, attribute, value) -> None:
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if v is not None and not v > 0:
            raise ValueError(f"{attribute.name} must be > 0, got {attribute.name}={value!r}")


def _not_negative(instance, attribute, value) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {attribute.name}={value!r}")


def _fraction(instance, attribute, value) -> None:
    if not 0 <= value < 1:
        raise ValueError(
            f"{attribute.name} must be a fraction of the run in [0, 1), got {attribute.name}={value!r}; "
            f"e.g. {attribute.name} = 0.1 warms up over the first tenth of the steps"
        )


TASKS = ("itm", "vqa")


def _learning_rate(instance, attribute, value) -> None:
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(TASKS))
        if unknown or not value:
            raise ValueError(f"lr table keys must be tasks {list(TASKS)}, got {sorted(value)}")
        values = list(value.values())
    else:
        values = [value]
    for lr in values:
        if isinstance(lr, list) and (not lr or len(set(lr)) != len(lr)):
            raise ValueError(f"lr lists must be non-empty without repeats, got lr={lr!r}")
        _positive(instance, attribute, lr)


def _distinct(instance, attribute, value) -> None:
    if not value or len(set(value)) != len(value):
        raise ValueError(f"{attribute.name} must be non-empty without repeats, got {attribute.name}={value!r}")


def _splits(instance, attribute, value) -> None:
    if not value or len(set(value)) != len(value):
        raise ValueError(f"{attribute.name} must list 'val' and/or 'test' once each, got {value!r}")


@attrs.frozen
class StudentSpec:
    """One MoIL student: approximation, ranks, and how it follows its target."""

    name: str = "hybrid"
    approx: ApproxName = "hybrid"
    rank: int = attrs.field(default=8, validator=_positive)
    transform_rank: int | None = attrs.field(default=None, validator=_positive)
    side: Literal["input", "output"] = "input"
    #: ``None`` = the arm's momentum; else a momentum spec (see
    #: :func:`moil.harness.build.parse_momentum`).
    momentum: str | float | None = None
    lr: float | None = attrs.field(default=None, validator=_positive)
    solver_steps: int = attrs.field(default=1, validator=_positive)
    refit: Literal["none", "svd", "als"] = "none"
    refit_every: int = 0
    final_fit: bool = False


@attrs.frozen
class ArmSpec:
    """One arm of a comparison: a recipe and its hyper-parameters.

    ``lr`` may be a list: the arm then sweeps it on the validation split (never
    the test split) and uses the best value for every seed. A table gives each
    task its own (``lr = {itm = 3e-4, vqa = [1e-3, 3e-3]}``).
    """

    name: str = "moil"
    recipe: RecipeName = "moil"
    lr: float | list[float] | dict[str, float | list[float]] = attrs.field(default=2e-4, validator=_learning_rate)
    head_lr_scale: float = attrs.field(default=1.0, validator=_positive)
    weight_decay: float = 0.01
    #: Learning-rate warm-up as a fraction of the run's steps, in [0, 1).
    warmup: float = attrs.field(default=0.1, validator=_fraction)
    momentum: str | float = "half-life:20"
    # LoRA / PEFT arms: the approximation and rank (set the rank for equal stored size).
    approx: ApproxName = "lowrank"
    rank: int = attrs.field(default=8, validator=_positive)
    scale: float = 1.0
    students: list[StudentSpec] = attrs.field(factory=lambda: [StudentSpec()])

    def learning_rates(self, task: str) -> list[float]:
        """The learning rates this arm tries on ``task`` (one value: no sweep)."""
        lr = self.lr[task] if isinstance(self.lr, dict) else self.lr
        return list(lr) if isinstance(lr, list) else [lr]


@attrs.frozen
class DataSpec:
    dataset: Literal["digits", "fashion"] = "digits"
    #: Images kept per split (0 = all): a smaller run for smoke tests.
    limit: int = 0
    batch_size: int = attrs.field(default=32, validator=_positive)
    eval_batch_size: int = attrs.field(default=250, validator=_positive)
    split_seed: int = 0


@attrs.frozen
class ModelSpec:
    #: ``minilm-efficientnet``: VisualBERT on the real all-MiniLM-L6-v2 weights with
    #: EfficientNet-Lite0 grid tokens; ``tiny``: a random-init small one (tests).
    family: Literal["minilm-efficientnet", "tiny"] = "minilm-efficientnet"
    mlp: bool = False


@attrs.frozen
class TrainSpec:
    steps: int = attrs.field(default=200, validator=_positive)
    #: Steps of each learning-rate sweep run (``None`` = ``steps``).
    sweep_steps: int | None = attrs.field(default=None, validator=_positive)
    seeds: list[int] = attrs.field(factory=lambda: [0, 1, 2], validator=_distinct)
    tasks: list[Literal["itm", "vqa"]] = attrs.field(factory=lambda: ["itm", "vqa"], validator=_distinct)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    #: ``auto`` = CUDA when available, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: torch intra-op threads per run (0 = torch's default, or cores ÷ workers).
    #: Results depend on it in the last bits, which short runs can amplify: fix it
    #: (e.g. 1) to reproduce a table exactly.
    threads: int = attrs.field(default=0, validator=_not_negative)
    #: Runs trained at once, each in its own process (1 = in this process).
    workers: int = attrs.field(default=1, validator=_positive)
    #: Also checkpoint every this many steps (0 = only when a run ends or is stopped):
    #: bounds what a killed worker loses in long runs.
    checkpoint_every: int = attrs.field(default=0, validator=_not_negative)
    #: Splits every (non-sweep) run is scored on; sweeps always use ``val``.
    eval_splits: list[Literal["val", "test"]] = attrs.field(factory=lambda: ["val", "test"], validator=_splits)


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


_converter = cattrs.Converter(forbid_extra_keys=True)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _number_or_list(value: Any, _type: Any) -> float | list[float]:
    return [_number(v) for v in value] if isinstance(value, list) else _number(value)


def _text_or_number(value: Any, _type: Any) -> str | float:
    return value if isinstance(value, str) else _number(value)


def _integer(value: Any, _type: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _boolean(value: Any, _type: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


_converter.register_structure_hook(int, _integer)
_converter.register_structure_hook(bool, _boolean)  # else bool, an int subclass, takes the int hook
_converter.register_structure_hook(float | list[float], _number_or_list)
_converter.register_structure_hook(
    float | list[float] | dict[str, float | list[float]],
    lambda v, t: {str(k): _number_or_list(x, t) for k, x in v.items()} if isinstance(v, dict) else _number_or_list(v, t),
)
_converter.register_structure_hook(str | float, _text_or_number)
_converter.register_structure_hook(
    str | float | None, lambda v, t: None if v is None else _text_or_number(v, t)
)


def parse_config(raw: dict[str, Any], source: str = "<config>") -> Config:
    """A :class:`Config` from a plain dict (e.g. parsed TOML), with readable errors."""
    try:
        return _converter.structure(raw, Config)
    except Exception as err:  # cattrs raises exception groups; flatten them
        problems = (
            cattrs.transform_error(err, path="$", format_exception=_describe)
            if isinstance(err, cattrs.BaseValidationError)
            else [str(err)]
        )
        raise ConfigError(f"{source}: invalid config:\n  " + "\n  ".join(problems)) from None


def _describe(exc: BaseException, type_: Any) -> str:
    # Our validators' messages name the field and the fix; keep them verbatim.
    if type(exc) is ValueError and "must" in str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)


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
