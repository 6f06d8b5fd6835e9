"""Momentum specs of a config: short strings (or numbers) naming a momentum schedule.

``0.99`` or ``"constant:0.99"``; ``"half-life:20"`` (m = 0.5^(1/20));
``"cosine:0.99"`` or ``"cosine:0.99:1.0"`` (BYOL ramp over the run);
``"linear:0.9:0.99"`` (linear warm-up over the run); ``"none"`` = 0 (target = teacher).
:func:`parse_momentum` turns one into a schedule from :mod:`moil.schedules`, checked the
way its consumer (:class:`moil.momentum.MomentumTarget`) checks it: momenta in ``[0, 1]``.
"""

from __future__ import annotations

import math
from typing import Any

from moil.harness.config import ConfigError
from moil.momentum import MomentumTarget
from moil.schedules import Constant, CosineRamp, HalfLife, LinearWarmup

__all__ = ["FORMS", "MomentumSpecError", "parse_momentum"]

FORMS = "0.99, 'constant:0.99', 'half-life:20', 'cosine:0.99[:1.0]', 'linear:0.9:0.99' or 'none'"

#: kind -> allowed numbers of arguments
_ARITY = {"none": (0,), "constant": (1,), "half-life": (1,), "cosine": (1, 2), "linear": (2,)}


class MomentumSpecError(ConfigError):
    """A momentum spec that names no schedule or whose momenta leave ``[0, 1]``."""


def _numbers(spec: str, parts: list[str]) -> list[float]:
    out = []
    for p in parts:
        try:
            value = float(p)
        except ValueError:
            raise MomentumSpecError(
                f"momentum {spec!r}: {p!r} is not a number; use {FORMS} (e.g. 'half-life:20')."
            ) from None
        if not math.isfinite(value):
            raise MomentumSpecError(f"momentum {spec!r}: {p!r} is not a finite number; use {FORMS}.")
        out.append(value)
    return out


def _constant(value: float, spec: str | float) -> Constant:
    if value == 1:  # a ramp may end at 1 (BYOL); a constant 1 never moves the target from W0
        raise MomentumSpecError(f"momentum {spec!r}: a constant momentum of 1 keeps the target at the pre-trained "
                                "weights, so the students imitate W0 and learn nothing; use a number in [0, 1), "
                                "e.g. 0.99, or 'half-life:20'.")
    return Constant(float(value))


def _schedule(spec: str | float, steps: int) -> Any:
    if isinstance(spec, bool) or not isinstance(spec, (str, int, float)):
        raise MomentumSpecError(f"momentum must be a number or a string, got momentum={spec!r}; use {FORMS}.")
    if isinstance(spec, (int, float)):
        return _constant(spec, spec)
    kind, _, rest = spec.partition(":")
    if kind not in _ARITY:
        raise MomentumSpecError(f"momentum {spec!r} is not understood; use {FORMS}.")
    args = _numbers(spec, [a for a in rest.split(":") if a] if rest else [])
    if len(args) not in _ARITY[kind]:
        raise MomentumSpecError(
            f"momentum {spec!r}: {kind!r} takes {' or '.join(map(str, _ARITY[kind]))} number(s), "
            f"got {len(args)}; use {FORMS}."
        )
    if kind == "none":
        return Constant(0.0)
    if kind == "constant":
        return _constant(args[0], spec)
    if kind == "half-life":
        return HalfLife(args[0])
    if kind == "cosine":
        return CosineRamp(*args, steps=steps)
    return LinearWarmup(args[0], args[1], steps)


def parse_momentum(spec: str | float, steps: int) -> Any:
    """A momentum schedule from a short spec (see the module doc) over a run of ``steps``.

    Raises:
      MomentumSpecError: the spec names no schedule, a number in it does not parse or
        is not finite, or its momenta leave ``[0, 1]``; the message lists the forms.
    """
    try:
        schedule = _schedule(spec, steps)
        MomentumTarget(schedule)  # the consumer's check: momenta in [0, 1]
    except MomentumSpecError:
        raise
    except (TypeError, ValueError) as err:
        raise MomentumSpecError(f"momentum {spec!r}: {err}") from None
    return schedule
