"""Run the approximation contract on random examples: :func:`check_approximation`.

It draws weights, biases and parameters with Hypothesis, for any object following
:class:`moil.approx.Approximation` — built-in or user-defined — and runs every law
of :mod:`moil.testing.laws` on each.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from moil.testing.laws import (
    Reference,
    _Example,
    _law_deterministic,
    _law_follows,
    _law_gradients,
    _law_identity,
    _law_no_mutation,
    _law_num_params,
    _law_protocol,
    _law_reference,
    _law_shapes,
    _law_shareable,
    _law_weight_and_bias,
    _run,
)
from moil.testing.strategies import adapter_params, seeds, weight_shapes, weights

__all__ = ["check_approximation"]

_EXTRA_FEATURES = 6  # widths are drawn in [lower, lower + 6]


def _min_features(approx, min_features: int | None) -> int:
    """Smallest width to draw: the approximation's ranks and ``min_features``."""
    found = [getattr(approx, n, None) for n in ("rank", "transform_rank")] + [min_features]
    return max([1] + [n for n in found if isinstance(n, int) and not isinstance(n, bool)])



def check_approximation(
    approx,
    *,
    reference: Reference | None = None,
    max_examples: int = 25,
    dtypes: tuple[torch.dtype, ...] = (torch.float64,),
    min_features: int | None = None,
    device: str | torch.device = "cpu",
) -> None:
    """Check the approximation contract on random examples; raise if a law fails.

    For weights ``w0`` ``(out, in)`` with ``out, in ≥ max(rank, transform_rank,
    min_features)`` (the attributes read when present), biases ``b0`` ``(out,)``
    or ``None``, non-trivial random ``params`` (:func:`adapter_params`) and
    inputs ``x`` ``(batch, in)``, with ``Ŵ = weight(params, w0)`` and
    ``b̂ = bias(params, w0, b0)``:

    * **protocol** — ``init``, ``weight``, ``bias``, ``num_params``, ``shapes``,
      ``weight_and_bias`` exist and ``shareable`` is a frozenset;
    * **follows w0** — ``init``'s tensors, ``Ŵ`` ``(out, in)`` and ``b̂`` ``(out,)``
      have ``w0``'s dtype and device;
    * **identity at init** — ``weight(init(w0, b0), w0) == w0`` and
      ``bias(init(w0, b0), w0, b0) == b0`` exactly (``None`` or zeros if ``b0`` is ``None``);
    * **num_params** — ``num_params(out, in) == Σ numel(init(w0))``;
    * **shapes** — ``shapes(out, in)`` lists exactly ``init``'s keys and shapes;
    * **deterministic init** — equal seeded generators give equal params;
    * **shareable** — each name in ``shareable`` is a parameter whose shape does
      not depend on ``out``;
    * **no mutation** — ``init``/``weight``/``bias`` leave params, ``w0``, ``b0`` as they were;
    * **finite gradients** — ``torch.func.grad`` of ``Σ G⊙Ŵ + Σ g⊙b̂`` is finite;
    * **weight_and_bias** — ``weight_and_bias(params, w0, b0) == (Ŵ, b̂)`` exactly;
    * **factored == materialised** (if ``reference``) — ``x Ŵᵀ + b̂ ==
      reference(params, w0, b0, x)`` (``rtol`` 1e-9 in float64, looser below).

    Args:
      approx: any object following :class:`moil.approx.Approximation`.
      reference: optional factored/sequential forward, see :data:`Reference`.
      max_examples: Hypothesis examples (derandomized: the same on every run).
      dtypes: dtypes of ``w0`` to draw from, e.g. ``(torch.float64, torch.bfloat16)``.
      min_features: smallest width to draw, if more than the ranks need.
      device: where ``w0``, ``b0``, params and ``x`` live (generators stay on the CPU).

    Raises:
      AssertionError: a law failed; the message names the law and the example.
      ValueError: a bad argument.
    """
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
        raise ValueError(
            f"check_approximation: max_examples must be an int >= 1, got {max_examples!r}."
        )
    dtypes = tuple(dtypes)
    bad = [d for d in dtypes if not (isinstance(d, torch.dtype) and d.is_floating_point)]
    if not dtypes or bad:
        raise ValueError(
            f"check_approximation: dtypes must be floating torch dtypes, got {dtypes!r}."
        )
    if reference is not None and not callable(reference):
        raise ValueError(f"check_approximation: reference must be callable, got {reference!r}.")
    _law_protocol(approx)
    lower = _min_features(approx, min_features)

    @settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        report_multiple_bugs=False,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def laws(data: st.DataObject) -> None:
        dtype = data.draw(st.sampled_from(dtypes), label="dtype")
        out_f, in_f = data.draw(weight_shapes(lower, lower + _EXTRA_FEATURES), label="(out, in)")
        w0 = data.draw(weights((out_f, in_f), dtype, device=device), label="w0")
        b0 = data.draw(st.none() | weights((out_f,), dtype, device=device), label="b0")
        seed = data.draw(seeds(), label="seed")
        ex = _Example(approx, w0, b0)
        params = data.draw(
            _run(ex, "protocol", lambda: adapter_params(approx, w0, b0)), label="params"
        )
        batch = data.draw(st.integers(min_value=1, max_value=3), label="batch")
        x = data.draw(weights((batch, in_f), dtype, device=device), label="x")
        _run(ex, "follows w0", lambda: _law_follows(ex, params))
        _run(ex, "identity at init", lambda: _law_identity(ex, seed))
        _run(ex, "num_params", lambda: _law_num_params(ex))
        _run(ex, "shapes", lambda: _law_shapes(ex))
        _run(ex, "deterministic init", lambda: _law_deterministic(ex, seed))
        _run(ex, "shareable", lambda: _law_shareable(ex))
        _run(ex, "no mutation", lambda: _law_no_mutation(ex, params))
        _run(ex, "finite gradients", lambda: _law_gradients(ex, params, seed))
        _run(ex, "weight_and_bias", lambda: _law_weight_and_bias(ex, params))
        if reference is not None:
            _run(ex, "factored == materialised", lambda: _law_reference(ex, params, x, reference))

    laws()
