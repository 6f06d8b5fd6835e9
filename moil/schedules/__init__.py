"""Schedules: plain callables ``step -> value``, one family for learning rates and momenta.

A schedule maps an update index ``step >= 0`` (an ``int``) to a finite value ``>= 0``:
the learning rate of that update, or the momentum of a momentum target. Each built-in
schedule is an immutable :func:`attrs.frozen` class, checked when it is built, with the
same rules everywhere:

* lengths are counts of updates (``steps``, ``total_steps``); a *fraction* is always a
  field of its own (``warmup``, ``fraction``) in ``[0, 1]`` — never a number whose meaning
  changes at 1;
* ``bounds`` is the closed interval the values lie in, so a consumer checks its own
  range when the schedule enters (momenta in ``[0, 1]``: :class:`moil.momentum.MomentumTarget`);
* a schedule may leave its length to the run (``total_steps=None``, ``HalfLife(fraction=…)``):
  :func:`bind_run` fixes it once the run's length is known (:func:`moil.train.train` does),
  and refuses a schedule that ends before the run does.

Any other ``Callable[[int], float]`` works wherever a schedule is expected; it is
checked value by value as it is used.

References:
    optax schedules (plain callables, validated when built); Loshchilov & Hutter,
    "Decoupled weight decay regularization", ICLR 2019 (warm-up + decay);
    Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020 (cosine momentum ramp).
"""

from moil.schedules.binding import bind_fields, bind_run, bounds_of
from moil.schedules.curves import (
    Constant,
    CosineRamp,
    HalfLife,
    LinearWarmup,
    Scaled,
    Schedule,
    WarmupLinearDecay,
)

__all__ = [
    "Constant",
    "CosineRamp",
    "HalfLife",
    "LinearWarmup",
    "Scaled",
    "Schedule",
    "WarmupLinearDecay",
    "bind_fields",
    "bind_run",
    "bounds_of",
]
