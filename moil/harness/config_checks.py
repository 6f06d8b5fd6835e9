"""The checks a config value passes where it enters: the values (attrs validators; the types
are checked by :mod:`moil.harness.config_types`, the cattrs converter of :mod:`moil.harness.config`).

Each validator raises :class:`FieldError`, whose message starts with the field's name,
gives the bad value and the fix; :func:`moil.harness.config.parse_config` adds the
value's path (``... @ $.arms[0].lr``). Floats are finite everywhere: ``nan`` and ``inf``
parse as TOML numbers but are never a learning rate, a decay or a scale.

Cross-field rules (a batch that fits the data, a refit that has a solver) run in the
``__attrs_post_init__`` of the class they concern, which calls them from here (e.g.
:func:`check_student`); they raise :class:`FieldError` naming the field.
"""

from __future__ import annotations

import math
import re
from typing import Any


__all__ = [
    "FieldError", "check_sources", "check_student", "distinct", "finite_non_negative", "finite_positive",
    "folder_name", "fraction", "learning_rate", "model_fields", "momentum_spec", "non_negative_int", "non_zero_scale",
    "positive", "splits", "stream_fits",
]


class FieldError(ValueError):
    """A bad config value; ``field`` is its name within its table (``None``: the message has the path)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive(instance, attribute, value) -> None:
    """An integer (or each of a list of them) > 0; ``None`` allowed."""
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if v is not None and not (_is_number(v) and v > 0):
            raise FieldError(f"{attribute.name} must be > 0, got {attribute.name}={value!r}", attribute.name)


def finite_positive(instance, attribute, value) -> None:
    """A finite number > 0 (``None`` allowed): learning rates and rate multipliers."""
    if value is not None and not (_is_number(value) and math.isfinite(value) and value > 0):
        raise FieldError(
            f"{attribute.name} must be > 0 and finite, got {attribute.name}={value!r}; e.g. "
            f"{attribute.name} = {attribute.default if _is_number(attribute.default) else 1e-3!r}",
            attribute.name,
        )


def finite_non_negative(instance, attribute, value) -> None:
    """A finite number >= 0 (weight decay)."""
    if not (_is_number(value) and math.isfinite(value) and value >= 0):
        raise FieldError(
            f"{attribute.name} must be a finite number >= 0, got {attribute.name}={value!r}; "
            f"e.g. {attribute.name} = {attribute.default!r} (0 turns it off)",
            attribute.name,
        )


def non_negative_int(instance, attribute, value) -> None:
    """An integer >= 0 (0 usually means off / all)."""
    if value < 0:
        raise FieldError(
            f"{attribute.name} must be >= 0, got {attribute.name}={value!r}; 0 means "
            f"{'all images' if attribute.name == 'limit' else 'off'}",
            attribute.name,
        )


def non_zero_scale(instance, attribute, value) -> None:
    """A finite, non-zero number: an adapter scale (0 makes the adapter a no-op)."""
    if not (_is_number(value) and math.isfinite(value) and value != 0):
        raise FieldError(
            f"{attribute.name} must be a finite non-zero number, got {attribute.name}={value!r}; "
            f"e.g. {attribute.name} = 1.0 (0 would freeze the adapter at W0)",
            attribute.name,
        )


def fraction(instance, attribute, value) -> None:
    """A fraction of the run in ``[0, 1)``."""
    if not 0 <= value < 1:
        raise FieldError(
            f"{attribute.name} must be a fraction of the run in [0, 1), got {attribute.name}={value!r}; "
            f"e.g. {attribute.name} = 0.1 warms up over the first tenth of the steps",
            attribute.name,
        )


def share(instance, attribute, value) -> None:
    """A share in ``(0, 1]``."""
    if isinstance(value, bool) or not 0 < value <= 1:
        raise FieldError(
            f"{attribute.name} must be in (0, 1], got {attribute.name}={value!r}; e.g. {attribute.name} = 1 "
            "(all of it) or 0.5 (half)",
            attribute.name,
        )


def learning_rate(tasks: tuple[str, ...]):
    """A validator for ``lr``: a finite number > 0, a list of them (a sweep), or a task table."""

    def check(instance, attribute, value) -> None:
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(tasks))
            if unknown or not value:
                raise FieldError(f"lr table keys must be tasks {list(tasks)}, got {sorted(value)}", "lr")
            values = list(value.values())
        else:
            values = [value]
        for lr in values:
            if isinstance(lr, list) and (not lr or len(set(lr)) != len(lr)):
                raise FieldError(f"lr lists must be non-empty without repeats, got lr={lr!r}", "lr")
            for v in lr if isinstance(lr, list) else [lr]:
                if not (_is_number(v) and math.isfinite(v) and v > 0):
                    raise FieldError(f"lr must be > 0 and finite, got lr={v!r}; e.g. lr = 2e-4", "lr")

    return check


def folder_name(instance, attribute, value) -> None:
    """A name that becomes a folder or file name of the run (``runs/<task>/<arm>``, ``student-<name>``)."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.+-]+", value) or set(value) == {"."}:
        raise FieldError(f"{attribute.name} = {value!r} names a folder of the run: use letters, digits and "
                         f". _ - + only (no '/', spaces or '..'), e.g. {attribute.name} = 'moil-r8'", attribute.name)


def distinct(instance, attribute, value) -> None:
    """A non-empty list without repeats (seeds, tasks: each names runs)."""
    if not value or len(set(value)) != len(value):
        raise FieldError(
            f"{attribute.name} must be non-empty without repeats, got {attribute.name}={value!r}", attribute.name
        )


def splits(instance, attribute, value) -> None:
    if not value or len(set(value)) != len(value):
        raise FieldError(f"{attribute.name} must list 'val' and/or 'test' once each, got {value!r}", attribute.name)


def momentum_spec(instance, attribute, value) -> None:
    """A momentum spec :func:`moil.harness.momentum_spec.parse_momentum` understands."""
    if value is None:
        return
    from moil.harness.momentum_spec import parse_momentum

    try:
        parse_momentum(value, steps=1)  # the form and the range; the run's length comes later
    except ValueError as err:
        raise FieldError(str(err), attribute.name) from None


def stream_fits(limit: int, batch_size: int, tasks: list[str]) -> None:
    """Refuse a ``[data]`` whose training split cannot fill one batch of a task.

    With ``drop_last`` an ITM batch of ``B`` rows takes ``B / 2`` images (a matching and a
    non-matching caption each), a VQA batch ``B`` images; a split of fewer images yields
    no batch at all, and a training loop waiting for one would never progress.
    """
    if "itm" in tasks and batch_size % 2:
        raise FieldError(
            f"data.batch_size = {batch_size} must be even for the ITM task (a matching and a "
            f"non-matching caption per image); use data.batch_size = {batch_size + 1}"
        )
    need = {t: batch_size // 2 if t == "itm" else batch_size for t in tasks}
    task = max(need, key=need.get)
    if limit and limit < need[task]:
        most = limit * 2 if task == "itm" else limit
        raise FieldError(
            f"data.limit = {limit} keeps {limit} training images, but a {task.upper()} batch of "
            f"data.batch_size = {batch_size} needs {need[task]}: the training stream would yield no "
            f"batch. Set data.limit >= {need[task]} (or 0 for every image), or lower data.batch_size "
            f"to at most {most}."
        )


#: Output keys the task losses and metrics read (``[model] outputs`` maps them to a model's fields).
OUTPUT_KEYS = ("itm_logits", "vqa_logits", "pair_logits", "image_embeds", "text_embeds", "logit_scale")


def model_fields(spec: Any) -> None:
    """``[model]`` rules: ``model_class``/``outputs`` only with ``family = 'generic'``, which needs
    both a class and ``targets``; ``outputs`` maps known moil keys to field names."""
    generic = spec.family == "generic"
    for name in ("model_class", "outputs"):
        if getattr(spec, name) and not generic:
            raise FieldError(
                f"{name} = {getattr(spec, name)!r} is read only by family = 'generic' (got family = "
                f"{spec.family!r}); remove {name}, or set family = 'generic' with targets and heads", name,
            )
    if not generic:
        return
    if not spec.model_class or not re.fullmatch(r"[A-Za-z_]\w*", spec.model_class):
        raise FieldError(
            f"model_class = {spec.model_class!r}: family = 'generic' needs the transformers class to load, "
            "e.g. model_class = \"BlipForImageTextRetrieval\" (a name from `import transformers`)", "model_class",
        )
    if not spec.targets:
        raise FieldError(
            "targets = []: family = 'generic' has no default targets; list the linear layers to adapt, "
            "e.g. targets = [\"attention.self.query\", \"attention.self.value\"] (name suffixes)", "targets",
        )
    for key, field in spec.outputs.items():
        if key not in OUTPUT_KEYS or not isinstance(field, str) or not field:
            raise FieldError(
                f"outputs = {spec.outputs!r}: {key!r} = {field!r} is not a moil output key mapped to a field "
                f"name; keys are {list(OUTPUT_KEYS)}, e.g. outputs = {{itm_logits = \"itm_score\"}}", "outputs",
            )


def check_sources(config: Any) -> None:
    """A pretrained folder goes with data from disk, the demo model with the demo data."""
    model, data = config.model, config.data
    demo_family = model.family in ("minilm-efficientnet", "tiny")
    if model.pretrained is not None and demo_family:
        raise ValueError(
            f"model.pretrained = {model.pretrained!r} must go with family = 'auto' (or 'vilt', 'clip', "
            f"'bridgetower', 'visualbert', 'generic'), got family = {model.family!r}; add family = \"auto\" to [model]"
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
    pairs = model.pretrained is None and data.dataset == "digit-pairs"
    if model.prealign.steps and not (pairs and model.family == "minilm-efficientnet"):
        raise ValueError(
            f"model.prealign.steps = {model.prealign.steps}: pre-alignment (image–text matching of single digits) "
            f"builds the start of the digit-pairs benchmark, but this config has data.dataset = {data.dataset!r}, "
            f"model.family = {model.family!r}; set data.dataset = 'digit-pairs' with family = 'minilm-efficientnet', "
            "or model.prealign.steps = 0 (your own pretrained model is already aligned)"
        )
    if pairs and (other := [t for t in config.train.tasks if t not in ("nlvr2", "vqa")]):
        raise ValueError(f"train.tasks {other} do not run on data.dataset = 'digit-pairs' (statements and "
                         "questions about two digits): use tasks 'nlvr2' and/or 'vqa', or data.dataset = 'digits'")
    if pairs and "nlvr2" in config.train.tasks and data.batch_size % 2:
        raise ValueError(f"data.batch_size = {data.batch_size} must be even for nlvr2 on data.dataset = 'digit-pairs' "
                         f"(a true and a false statement per pair); use data.batch_size = {data.batch_size + 1}")
    for task, needs in (("retrieval", "a dual encoder (CLIP)"),
                        ("nlvr2", "image pairs: data.dataset = 'digit-pairs', or pairs from disk (ViLT, VisualBERT)")):
        if task in config.train.tasks and model.pretrained is None and not (pairs and task == "nlvr2"):
            raise ValueError(f"train.tasks {task!r} must run on {needs}: set model.pretrained and data.train"
                             + (", or data.dataset = 'digit-pairs'" if task == "nlvr2" else ""))


def check_student(spec: Any) -> None:
    """A StudentSpec's cross-field rules: a refit where one is asked for and one its approximation
    has (svd: lowrank; als: an input-side hybrid or transform), a final fit for a student no
    gradient step moves, and no field the student would not read."""
    if spec.refit == "none" and (spec.refit_every or spec.final_fit):
        field = "refit_every" if spec.refit_every else "final_fit"
        raise FieldError(
            f"{field} = {getattr(spec, field)!r} needs a closed-form solver, but refit = 'none'; "
            "set refit = 'svd' or 'als'", field,
        )
    if spec.refit == "svd" and spec.approx != "lowrank":
        raise FieldError(f"refit = 'svd' fits approx = 'lowrank' students, got approx = {spec.approx!r}; "
                         "use refit = 'als' for hybrid and transform", "refit")
    if spec.refit == "als" and (spec.approx == "lowrank" or spec.side != "input"):
        got = f"approx = {spec.approx!r}" if spec.approx == "lowrank" else f"side = {spec.side!r}"
        raise FieldError(f"refit = 'als' fits input-side hybrid and transform students, got {got}; use "
                         "refit = 'svd' for lowrank, or gradient steps (refit = 'none') after the layer", "refit")
    if spec.solver_steps == 0 and not spec.final_fit:
        raise FieldError(
            "solver_steps = 0 (no imitation steps: the student is only fitted in closed form) needs "
            "final_fit = true with refit = 'svd' or 'als'; otherwise the stored student is its "
            "initialisation, or a fit of an older target", "solver_steps",
        )
    if spec.solver_steps == 0 and spec.lr is not None:
        raise FieldError(f"lr = {spec.lr!r} is only read by gradient steps, and solver_steps = 0 takes none; "
                         "remove lr", "lr")
    if spec.transform_rank is not None and spec.approx != "hybrid":
        raise FieldError(
            f"transform_rank = {spec.transform_rank} is only read by approx = 'hybrid', got "
            f"approx = {spec.approx!r}; remove transform_rank (a transform's rank is rank)",
            "transform_rank",
        )
