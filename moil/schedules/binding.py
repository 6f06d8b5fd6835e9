"""Schedules inside components: their value bounds, and binding them to a run's length."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["bind_fields", "bind_run", "bounds_of"]


def bounds_of(schedule: Any) -> tuple[float, float] | None:
    """``schedule.bounds`` for a built-in schedule, ``None`` for a plain callable."""
    bounds = getattr(type(schedule), "bounds", None)
    return schedule.bounds if isinstance(bounds, property) else None


def bind_run(component: Any, steps: int) -> Any:
    """``component`` with every schedule inside it bound to a run of ``steps`` updates.

    Walks attrs classes, mappings, lists and tuples; an object with a ``for_run(steps)``
    method is replaced by its result (a run-length schedule gets its length; a schedule
    that ends before the run raises ``ValueError``). Nothing is modified: changed parts
    are rebuilt with :func:`attrs.evolve`, unchanged ones are returned as they are.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"bind_run: steps must be an integer >= 0, got steps={steps!r}")
    for_run = getattr(component, "for_run", None)
    if callable(for_run) and not isinstance(component, type):
        return for_run(steps)
    return bind_fields(component, steps)


def bind_fields(component: Any, steps: int) -> Any:
    """:func:`bind_run` applied to the parts of ``component`` (not to ``component`` itself)."""
    if isinstance(component, type):
        return component
    if attrs.has(type(component)):
        changes = {}
        for field in attrs.fields(type(component)):
            if not field.init:
                continue
            value = getattr(component, field.name)
            bound = bind_run(value, steps)
            if bound is not value:
                changes[field.alias] = bound
        return attrs.evolve(component, **changes) if changes else component
    if isinstance(component, Mapping):
        bound = {k: bind_run(v, steps) for k, v in component.items()}
        return bound if any(bound[k] is not v for k, v in component.items()) else component
    if isinstance(component, (list, tuple)) and not hasattr(component, "_fields"):
        bound = [bind_run(v, steps) for v in component]
        return type(component)(bound) if any(b is not v for b, v in zip(bound, component)) else component
    return component
