"""The approximation contract (DESIGN.md) as executable, property-based laws.

:func:`check_approximation` runs every law on random weights, biases and
parameters drawn by Hypothesis, for any object following
:class:`moil.approx.Approximation` — built-in or user-defined.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from torch import Tensor

from moil.testing.strategies import _randn, adapter_params, seeds, weight_shapes, weights

__all__ = ["LAWS", "LawViolation", "Reference", "check_approximation"]

#: ``reference(params, w0, b0, x) -> y``: a factored / sequential forward of a
#: batch ``x`` ``(batch, in)`` to ``y`` ``(batch, out)``.
Reference = Callable[[Mapping[str, Tensor], Tensor, "Tensor | None", Tensor], Tensor]

#: The laws, in the order they are checked; failures name one of them.
LAWS = (
    "protocol",
    "follows w0",
    "identity at init",
    "num_params",
    "deterministic init",
    "shareable",
    "no mutation",
    "finite gradients",
    "factored == materialised",
)

_METHODS = ("init", "weight", "bias", "num_params")
_EXTRA_FEATURES = 6  # widths are drawn in [lower, lower + 6]
# Reference vs merged forward: rtol = tol and atol = tol·(1 + max|y|), per dtype of w0.
_TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 6e-2}


class LawViolation(AssertionError):
    """A contract law failed; the message names the law and the example."""


class _Example:
    """One drawn example; ``fail`` raises the AssertionError that names the law."""

    def __init__(self, approx, w0: Tensor, b0: Tensor | None) -> None:
        self.approx, self.w0, self.b0 = approx, w0, b0

    def fail(self, law: str, detail: str) -> None:
        bias = "None" if self.b0 is None else f"shape {tuple(self.b0.shape)}"
        raise LawViolation(
            f"check_approximation: law {law!r} failed for {self.approx!r} with w0 of shape "
            f"{tuple(self.w0.shape)}, dtype {self.w0.dtype}, device {self.w0.device}, "
            f"b0 {bias}: {detail}"
        )

    def check(self, ok: bool, law: str, detail: str) -> None:
        if not ok:
            self.fail(law, detail)


def _min_features(approx, min_features: int | None) -> int:
    """Smallest width to draw: the approximation's ranks and ``min_features``."""
    found = [getattr(approx, n, None) for n in ("rank", "transform_rank")] + [min_features]
    return max([1] + [n for n in found if isinstance(n, int) and not isinstance(n, bool)])


def _law_protocol(approx) -> None:
    missing = [m for m in _METHODS if not callable(getattr(approx, m, None))]
    if missing:
        raise LawViolation(
            f"check_approximation: law 'protocol' failed for {approx!r}: no method(s) "
            f"{missing}; an approximation needs init, weight, bias and num_params."
        )


def _same(ex: _Example, law: str, what: str, got: Tensor | None, want: Tensor | None) -> None:
    if want is None:
        ok = got is None or (isinstance(got, Tensor) and not got.count_nonzero())
        ex.check(ok, law, f"{what} must be None or all zeros when b0 is None, got {got!r}")
        return
    ok = isinstance(got, Tensor) and got.shape == want.shape and torch.equal(got, want)
    ex.check(ok, law, f"{what} != expected exactly;\n got {got!r}\nwant {want!r}")


def _law_identity(ex: _Example, seed: int) -> None:
    a, w0, b0 = ex.approx, ex.w0, ex.b0
    params = a.init(w0, b0, generator=torch.Generator().manual_seed(seed))
    _same(ex, "identity at init", "weight(init(w0, b0), w0)", a.weight(params, w0), w0)
    _same(ex, "identity at init", "bias(init(w0, b0), w0, b0)", a.bias(params, w0, b0), b0)


def _follows(ex: _Example, what: str, t, shape: tuple[int, ...]) -> None:
    w0 = ex.w0
    ok = isinstance(t, Tensor) and tuple(t.shape) == shape
    ok = ok and t.dtype == w0.dtype and t.device == w0.device
    got = f"{tuple(t.shape)}, {t.dtype}, {t.device}" if isinstance(t, Tensor) else repr(t)
    ex.check(ok, "follows w0", f"{what} is {got}; want {shape}, {w0.dtype}, {w0.device}")


def _law_follows(ex: _Example, params: Mapping[str, Tensor]) -> None:
    a, w0, b0 = ex.approx, ex.w0, ex.b0
    out_f, in_f = w0.shape
    for k, v in a.init(w0, b0).items():
        _follows(ex, f"init()[{k!r}]", v, tuple(v.shape))
    _follows(ex, "weight(params, w0)", a.weight(params, w0), (out_f, in_f))
    bias = a.bias(params, w0, b0)
    if bias is not None or b0 is not None:
        _follows(ex, "bias(params, w0, b0)", bias, (out_f,))


def _law_num_params(ex: _Example) -> None:
    out_f, in_f = ex.w0.shape
    sizes = {k: v.numel() for k, v in ex.approx.init(ex.w0).items()}
    claimed = ex.approx.num_params(out_f, in_f)
    ok = isinstance(claimed, int) and claimed == sum(sizes.values())
    ex.check(
        ok,
        "num_params",
        f"num_params({out_f}, {in_f}) = {claimed!r} but init's tensors "
        f"hold {sum(sizes.values())} numbers {sizes}",
    )


def _law_deterministic(ex: _Example, seed: int) -> None:
    a, w0, b0 = ex.approx, ex.w0, ex.b0
    one = a.init(w0, b0, generator=torch.Generator().manual_seed(seed))
    two = a.init(w0, b0, generator=torch.Generator().manual_seed(seed))
    ex.check(
        list(one) == list(two), "deterministic init", f"keys differ: {list(one)} vs {list(two)}"
    )
    for k in one:
        ex.check(
            torch.equal(one[k], two[k]),
            "deterministic init",
            f"init()[{k!r}] differs between two generators seeded {seed}",
        )


def _law_shareable(ex: _Example) -> None:
    shareable = getattr(ex.approx, "shareable", None)
    if shareable is None:
        return
    out_f, in_f = ex.w0.shape
    wider = torch.zeros(out_f + 1, in_f, dtype=ex.w0.dtype, device=ex.w0.device)
    mine, theirs = ex.approx.init(ex.w0), ex.approx.init(wider)
    for k in shareable:
        ex.check(
            k in mine, "shareable", f"shareable key {k!r} is not a key of init() {sorted(mine)}"
        )
        ex.check(
            mine[k].shape == theirs[k].shape,
            "shareable",
            f"shareable {k!r} has shape {tuple(mine[k].shape)} for out={out_f} but "
            f"{tuple(theirs[k].shape)} for out={out_f + 1}; only parameters that depend on "
            "the input alone may be shared",
        )


def _law_no_mutation(ex: _Example, params: dict[str, Tensor]) -> None:
    a, w0, b0 = ex.approx, ex.w0, ex.b0
    items = list(params.items())
    before = {k: v.clone() for k, v in items}
    w0_before, b0_before = w0.clone(), None if b0 is None else b0.clone()
    a.weight(params, w0)
    a.bias(params, w0, b0)
    a.init(w0, b0)
    ex.check(list(params.items()) == items, "no mutation", "the params dict was changed")
    for k, v in before.items():
        ex.check(torch.equal(params[k], v), "no mutation", f"params[{k!r}] was changed in place")
    ex.check(torch.equal(w0, w0_before), "no mutation", "w0 was changed in place")
    ex.check(b0 is None or torch.equal(b0, b0_before), "no mutation", "b0 was changed in place")


def _law_gradients(ex: _Example, params: dict[str, Tensor], seed: int) -> None:
    a, w0, b0 = ex.approx, ex.w0, ex.b0
    out_f, in_f = w0.shape
    gw = _randn((out_f, in_f), seed, w0.dtype, w0.device, 1.0)
    gb = _randn((out_f,), seed + 1, w0.dtype, w0.device, 1.0)

    def scalar(p: dict[str, Tensor]) -> Tensor:
        s = (a.weight(p, w0) * gw).sum()
        bias = a.bias(p, w0, b0)
        return s if bias is None else s + (bias * gb).sum()

    grads = torch.func.grad(scalar)(params)
    for k, v in params.items():
        g = grads.get(k)
        ok = isinstance(g, Tensor) and g.shape == v.shape and bool(g.isfinite().all())
        ex.check(ok, "finite gradients", f"torch.func.grad w.r.t. params[{k!r}] is {g!r}")


def _law_reference(
    ex: _Example, params: dict[str, Tensor], x: Tensor, reference: Reference
) -> None:
    a, w0, b0 = ex.approx, ex.w0, ex.b0
    law = "factored == materialised"
    want = reference(params, w0, b0, x)
    bias = a.bias(params, w0, b0)
    got = x @ a.weight(params, w0).T
    got = got if bias is None else got + bias
    ex.check(
        isinstance(want, Tensor) and want.shape == got.shape,
        law,
        f"reference returned {getattr(want, 'shape', want)!r}, want shape {tuple(got.shape)}",
    )
    tol = _TOL.get(w0.dtype, 1e-4)
    want64, got64 = want.double(), got.double()
    atol = tol * (1.0 + float(want64.abs().max()))
    try:
        torch.testing.assert_close(got64, want64, rtol=tol, atol=atol)
    except AssertionError as err:
        ex.fail(law, f"x @ weight().T + bias() != reference(params, w0, b0, x):\n{err}")


def _run(ex: _Example, law: str, body: Callable[[], object]):
    """Run one law; an exception from the approximation fails that law too."""
    try:
        return body()
    except LawViolation:
        raise
    except Exception as err:  # noqa: BLE001 — any exception breaks the law
        ex.fail(law, f"raised {type(err).__name__}: {err}")


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

    * **protocol** — ``init``, ``weight``, ``bias``, ``num_params`` exist;
    * **follows w0** — ``init``'s tensors, ``Ŵ`` ``(out, in)`` and ``b̂`` ``(out,)``
      have ``w0``'s dtype and device;
    * **identity at init** — ``weight(init(w0, b0), w0) == w0`` and
      ``bias(init(w0, b0), w0, b0) == b0`` exactly (``None`` or zeros if ``b0`` is ``None``);
    * **num_params** — ``num_params(out, in) == Σ numel(init(w0))``;
    * **deterministic init** — equal seeded generators give equal params;
    * **shareable** — each name in ``shareable`` is a parameter whose shape does
      not depend on ``out``;
    * **no mutation** — ``init``/``weight``/``bias`` leave params, ``w0``, ``b0`` as they were;
    * **finite gradients** — ``torch.func.grad`` of ``Σ G⊙Ŵ + Σ g⊙b̂`` is finite;
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
        _run(ex, "deterministic init", lambda: _law_deterministic(ex, seed))
        _run(ex, "shareable", lambda: _law_shareable(ex))
        _run(ex, "no mutation", lambda: _law_no_mutation(ex, params))
        _run(ex, "finite gradients", lambda: _law_gradients(ex, params, seed))
        if reference is not None:
            _run(ex, "factored == materialised", lambda: _law_reference(ex, params, x, reference))

    laws()
