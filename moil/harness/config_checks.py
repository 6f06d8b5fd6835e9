"""The checks a config value passes where it enters: the types (:func:`structure_converter`, the
cattrs converter of :mod:`moil.harness.config`) and the values (attrs validators).

Each validator raises :class:`FieldError`, whose message starts with the field's name,
gives the bad value and the fix; :func:`moil.harness.config.parse_config` adds the
value's path (``... @ $.arms[0].lr``). Floats are finite everywhere: ``nan`` and ``inf``
parse as TOML numbers but are never a learning rate, a decay or a scale.

Cross-field rules (a batch that fits the data, a refit that has a solver) live with
the class they concern, as ``__attrs_post_init__`` checks that raise :class:`FieldError`
naming the dotted field path.
"""

from __future__ import annotations

import math
import re
from typing import Any

import cattrs

__all__ = [
    "FieldError", "distinct", "finite_non_negative", "finite_positive", "fraction", "learning_rate",
    "momentum_spec", "non_negative_int", "non_zero_scale", "positive", "problems_of", "splits", "stream_fits",
    "structure_converter",
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


def _as_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _number_or_list(value: Any, _type: Any) -> float | list[float]:
    return [_as_number(v) for v in value] if isinstance(value, list) else _as_number(value)


def _text_or_number(value: Any, _type: Any) -> str | float:
    return value if isinstance(value, str) else _as_number(value)


def _integer(value: Any, _type: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _boolean(value: Any, _type: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def structure_converter() -> cattrs.Converter:
    """The cattrs converter of configs: unknown keys refused, numbers never silently
    truncated (``2.5`` workers), booleans never taken for integers."""
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(int, _integer)
    converter.register_structure_hook(bool, _boolean)  # else bool, an int subclass, takes the int hook
    converter.register_structure_hook(float | list[float], _number_or_list)
    converter.register_structure_hook(
        float | list[float] | dict[str, float | list[float]],
        lambda v, t: {str(k): _number_or_list(x, t) for k, x in v.items()} if isinstance(v, dict) else _number_or_list(v, t),
    )
    converter.register_structure_hook(str | float, _text_or_number)
    converter.register_structure_hook(
        str | float | None, lambda v, t: None if v is None else _text_or_number(v, t)
    )
    return converter


_FIELD_MARK = re.compile(r"\x00(\w+) @ (\S+)$")


def _describe(exc: BaseException, type_: Any) -> str:
    # Our validators' messages name the field and the fix; keep them verbatim, and
    # mark the field so that its path ends in it: "... @ $.arms[0].lr".
    if isinstance(exc, FieldError):
        return str(exc) + (f"\x00{exc.field}" if exc.field else "")
    if type(exc) is ValueError and "must" in str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)


def problems_of(err: BaseException) -> list[str]:
    """Every problem of a failed structure, one line each, ending in the value's path."""
    if not isinstance(err, cattrs.BaseValidationError):
        return [str(err)]
    return [_FIELD_MARK.sub(r" @ \2.\1", p) for p in cattrs.transform_error(err, path="$", format_exception=_describe)]
