"""Construction checks shared by the schedules (attrs validators and converters)."""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import attrs


def _real(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    name = f"{type(instance).__name__}.{attribute.name}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {attribute.name}={value!r}; e.g. {attribute.name}=0.99")
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(
            f"{name} must be a finite number >= 0, got {attribute.name}={value!r}; e.g. {attribute.name}=1e-3 "
            "for a learning rate, 0.99 for a momentum"
        )


def _fraction(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    _real(instance, attribute, value)
    if value > 1.0:
        raise ValueError(
            f"{type(instance).__name__}.{attribute.name} is a fraction of the run in [0, 1], got "
            f"{attribute.name}={value!r}; e.g. {attribute.name}=0.1 for a tenth of the run"
        )


def _whole(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    name = f"{type(instance).__name__}.{attribute.name}"
    if value is None and attribute.default is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer >= 1, got {attribute.name}={value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {attribute.name}={value!r}; e.g. {attribute.name}=100")


def _float(value: Any) -> Any:
    # Any real number (int, numpy scalar) becomes a float; bools and other types are
    # left for the validator to refuse with a clear message.
    return float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else value


def _int(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    try:
        return operator.index(value)
    except TypeError:
        return value


def _check_step(schedule: object, step: Any) -> int:
    bad = f"{type(schedule).__name__}: step must be an integer >= 0, got step={step!r}"
    if isinstance(step, bool):
        raise TypeError(bad)
    try:
        step = operator.index(step)
    except TypeError:
        raise TypeError(bad) from None
    if step < 0:
        raise ValueError(f"{type(schedule).__name__}: step must be >= 0, got step={step}")
    return step


def _unbound(schedule: object, field: str) -> ValueError:
    return ValueError(
        f"{schedule!r} spans the run ({field}), whose length is not known here. Train it "
        "with moil.train.train(..., steps=N), which binds it, or bind it yourself with "
        "moil.schedules.bind_run(component, N)."
    )


