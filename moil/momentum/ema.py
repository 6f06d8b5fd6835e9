"""The momentum target: an exponential moving average (EMA) of the teacher's weights.

MoIL keeps, for every adapted weight, a momentum copy ``W̄`` that trails the
full-rank teacher ``W``; the student imitates ``W̄``. This module holds the pure
update :func:`ema_update` and the optax-style component :class:`MomentumTarget`
(``init(teacher) -> state``, ``update(state, teacher) -> new state``).

References:
    G. Luo et al., "MoIL: Momentum Imitation Learning for Efficient Vision-Language
    Adaptation", IEEE TPAMI 47(7), 2025 (reference implementation: ``m = 0.9996``).
    optax ``ema`` (explicit ``init``/``update`` state).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import NamedTuple

import attrs
import torch
from torch import Tensor

from moil.momentum.half_life import check_momentum
from moil.schedules import Constant, Schedule, bounds_of

__all__ = ["MomentumState", "MomentumTarget", "accumulation_dtype", "ema_update"]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a momentum target of ``dtype`` weights is kept in: at least float32.

    A bf16/fp16 average cannot follow a slow momentum: with ``m = 0.9996`` each step
    moves ``W̄`` by ``4·10⁻⁴·(W − W̄)``, less than half a bf16 ulp of ``W̄``
    (``2⁻⁹…2⁻⁸ |W̄|``) unless ``|W − W̄| ≳ 5 |W̄|``, so the step rounds away and the target
    stops (towards a fixed ``W = 1`` from 0 it sticks at 0.125, not ``1 − m¹⁰⁰⁰ = 0.33``).
    float32/float64 (and integers) are kept as they are.
    """
    if dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    if dtype == torch.complex32:
        return torch.complex64
    return dtype


def _widens(source: torch.dtype, target: torch.dtype) -> bool:
    """A source of ``source`` dtype is averaged exactly into a target of a wider ``target``."""
    return source != target and target == accumulation_dtype(source)


def _check_pairs(target: Mapping[str, Tensor], source: Mapping[str, Tensor]) -> None:
    missing = [k for k in target if k not in source]
    extra = [k for k in source if k not in target]
    if missing or extra:
        raise KeyError(
            "ema_update: target and source must have the same keys; "
            f"missing from source: {missing}, extra in source (not in target): {extra}"
        )
    for key, t in target.items():
        s = source[key]
        for what, a, b in (
            ("shape", tuple(t.shape), tuple(s.shape)),
            ("dtype", t.dtype, s.dtype),
            ("device", t.device, s.device),
        ):
            if a != b and not (what == "dtype" and _widens(s.dtype, t.dtype)):
                raise ValueError(
                    f"ema_update: {what} mismatch at key {key!r}: "
                    f"target has {what} {a}, source has {what} {b}"
                )
        if not (t.is_floating_point() or t.is_complex()):
            raise TypeError(
                f"ema_update: key {key!r} has dtype {t.dtype}; "
                "a moving average needs floating-point (or complex) tensors"
            )


def ema_update(
    target: Mapping[str, Tensor], source: Mapping[str, Tensor], momentum: float
) -> dict[str, Tensor]:
    """One EMA step of ``target`` towards ``source``, returning new tensors.

    .. math::
        \\bar W \\leftarrow m\\,\\bar W + (1 - m)\\,W

    for every key, computed as ``lerp(W̄, W, 1 - m)`` with one fused ``foreach`` call
    per (device, dtype) group, under :func:`torch.no_grad`. ``m = 0`` returns exact
    copies of ``source`` and ``m = 1`` exact copies of ``target``. For a constant
    source the distance shrinks by ``m`` per step:
    ``‖W̄_{k+1} − W‖ = m ‖W̄_k − W‖``.

    Args:
        target: ``{name: W̄}``, each tensor of any shape ``(*shape_name)``, floating dtype.
        source: ``{name: W}`` with the same keys, each of the same shape and device as
            the target tensor of that name (e.g. the teacher weights), and its dtype or
            the bf16/fp16 one it accumulates (:func:`accumulation_dtype`: a float32
            target of a bf16 teacher), upcast exactly before the average.
        momentum: ``m`` in ``[0, 1]``, a finite number.

    Returns:
        A new dict ``{name: m·W̄ + (1−m)·W}``, shapes ``(*shape_name)`` and dtypes of
        ``target``, in its key order; new tensors that do not require grad. Neither input
        dict nor any input tensor is modified.

    Raises:
        KeyError: the key sets differ (the message lists missing and extra keys).
        ValueError: ``momentum`` outside ``[0, 1]`` or not finite; a shape, dtype or
            device mismatch (the message names the key and both values).
        TypeError: a non-floating tensor or a non-numeric momentum.

    Example:
        >>> import torch
        >>> out = ema_update({"w": torch.zeros(2)}, {"w": torch.ones(2)}, 0.75)
        >>> out["w"]
        tensor([0.2500, 0.2500])

    References:
        MoIL reference implementation (momentum target update of q/k/v weights).
    """
    m = check_momentum(momentum, "ema_update")
    _check_pairs(target, source)
    with torch.no_grad():
        if m == 1.0:
            return {k: t.detach().clone() for k, t in target.items()}
        if m == 0.0:
            return {k: source[k].detach().to(t.dtype, copy=True) for k, t in target.items()}
        # One foreach call per (device, target dtype, source dtype); a bf16/fp16 teacher of a
        # float32 target is upcast exactly first.
        groups: dict[tuple[torch.device, torch.dtype, torch.dtype], list[str]] = {}
        for key, t in target.items():
            groups.setdefault((t.device, t.dtype, source[key].dtype), []).append(key)
        out: dict[str, Tensor] = {}
        for (_, dtype, _), keys in groups.items():
            # The out-of-place foreach op allocates new tensors; inputs stay untouched.
            new = torch._foreach_lerp(
                [target[k].detach() for k in keys], [source[k].detach().to(dtype) for k in keys], 1.0 - m
            )
            out.update(zip(keys, new))
        return {k: out[k] for k in target}


class MomentumState(NamedTuple):
    """State of a :class:`MomentumTarget`.

    Attributes:
        target: ``{name: W̄}``, the momentum weights, each of its teacher's shape, in
            its teacher's dtype or at least float32 (:func:`accumulation_dtype`).
        step: number of updates applied so far (the next update uses ``schedule(step)``).
    """

    target: dict[str, Tensor]
    step: int

    #: A checkpoint may hold ``target`` in bf16/fp16 (written before targets were kept in
    #: float32); it is restored by an exact upcast (:func:`moil.checkpoint.restore_state`).
    UPCAST_FIELDS = ("target",)


def _as_schedule(schedule: Schedule | float) -> Schedule:
    if isinstance(schedule, numbers.Real) and not isinstance(schedule, bool):
        schedule = Constant(float(schedule))
    if not callable(schedule):
        raise TypeError(
            "MomentumTarget.schedule must be a callable step -> momentum or a number in "
            f"[0, 1], got schedule={schedule!r}"
        )
    bounds = bounds_of(schedule)
    if bounds is not None and not (0.0 <= bounds[0] and bounds[1] <= 1.0):
        raise ValueError(
            f"a momentum schedule takes values in [0, 1], but {schedule!r} reaches "
            f"{bounds[0] if bounds[0] < 0 else bounds[1]!r}; 0 copies the teacher at every "
            "update, 1 never moves the target"
        )
    return schedule


@attrs.frozen
class MomentumTarget:
    """A momentum (EMA) copy of the teacher weights, with a momentum schedule.

    .. math::
        \\bar W_0 = W^{teacher}_0, \\qquad
        \\bar W_{k+1} = m_k\\,\\bar W_k + (1 - m_k)\\,W^{teacher}_k, \\qquad
        m_k = \\mathrm{schedule}(k)

    Configuration only; the tensors live in an explicit :class:`MomentumState`.

    Args:
        schedule: a ``Callable[[int], float]`` giving ``m_k`` in ``[0, 1]`` (see
            :mod:`moil.momentum.schedules`), or a number, turned into ``Constant(number)``.

    Example:
        >>> import torch
        >>> mt = MomentumTarget(0.5)
        >>> state = mt.init({"w": torch.zeros(2)})
        >>> state = mt.update(state, {"w": torch.ones(2)})
        >>> state.target["w"], state.step, mt.momentum(state)
        (tensor([0.5000, 0.5000]), 1, 0.5)

    References:
        MoIL reference implementation (``Constant(0.9996)``); optax ``ema``.
    """

    schedule: Schedule = attrs.field(converter=_as_schedule)

    def init(self, teacher: Mapping[str, Tensor]) -> MomentumState:
        """Start the target at the teacher's current values.

        Args:
            teacher: ``{name: W}``, tensors of any shape ``(*shape_name)``.

        Returns:
            ``MomentumState(target={name: detached copy of W}, step=0)``, each copy in
            :func:`accumulation_dtype` of ``W`` (float32 for a bf16/fp16 teacher, where a
            slow momentum's steps would round away; other dtypes as they are); later
            changes to ``teacher`` do not reach the state.
        """
        with torch.no_grad():
            target = {k: w.detach().to(accumulation_dtype(w.dtype), copy=True) for k, w in teacher.items()}
        return MomentumState(target=target, step=0)

    def momentum(self, state: MomentumState) -> float:
        """The momentum the next :meth:`update` will use: ``schedule(state.step)``."""
        return float(self.schedule(state.step))

    def update(self, state: MomentumState, teacher: Mapping[str, Tensor]) -> MomentumState:
        """One EMA step of the target towards ``teacher`` with ``m = schedule(state.step)``.

        Args:
            state: the current state; not modified.
            teacher: ``{name: W}`` with the keys, shapes, dtypes and devices of
                ``state.target``.

        Returns:
            ``MomentumState(ema_update(state.target, teacher, m), state.step + 1)``.

        Raises:
            The errors of :func:`ema_update` (mismatched keys or tensors, a schedule value
            outside ``[0, 1]``).
        """
        m = self.momentum(state)
        return MomentumState(target=ema_update(state.target, teacher, m), step=state.step + 1)
