"""The approximation contract (DESIGN.md) as executable laws, one function per law.

Each ``_law_*`` checks one example (a drawn ``w0``, ``b0``, params) and raises
:class:`LawViolation` naming the law; :func:`moil.testing.check_approximation`
draws the examples and runs them in the order of :data:`LAWS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from moil.testing.strategies import _randn

__all__ = ["LAWS", "LawViolation", "Reference"]

#: ``reference(params, w0, b0, x) -> y``: a factored / sequential forward of a
#: batch ``x`` ``(batch, in)`` to ``y`` ``(batch, out)``.
Reference = Callable[[Mapping[str, Tensor], Tensor, "Tensor | None", Tensor], Tensor]

#: The laws, in the order they are checked; failures name one of them.
LAWS = (
    "protocol",
    "follows w0",
    "identity at init",
    "num_params",
    "shapes",
    "deterministic init",
    "shareable",
    "no mutation",
    "finite gradients",
    "weight_and_bias",
    "factored == materialised",
)

_METHODS = ("init", "weight", "bias", "num_params", "shapes", "weight_and_bias")
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


def _law_protocol(approx) -> None:
    missing = [m for m in _METHODS if not callable(getattr(approx, m, None))]
    shareable = getattr(approx, "shareable", None)
    if missing or not isinstance(shareable, (set, frozenset)):
        raise LawViolation(
            f"check_approximation: law 'protocol' failed for {approx!r}: no method(s) "
            f"{missing}, shareable={shareable!r}; an approximation needs the methods "
            f"{list(_METHODS)} and a frozenset shareable (see moil.approx.Approximation)."
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


def _law_shapes(ex: _Example) -> None:
    out_f, in_f = ex.w0.shape
    made = {k: tuple(v.shape) for k, v in ex.approx.init(ex.w0, ex.b0).items()}
    claimed = {k: tuple(s) for k, s in ex.approx.shapes(out_f, in_f).items()}
    ex.check(claimed == made, "shapes", f"shapes({out_f}, {in_f}) = {claimed} but init makes {made}")


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
    shareable = ex.approx.shareable
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


def _law_weight_and_bias(ex: _Example, params: dict[str, Tensor]) -> None:
    a, w0, b0 = ex.approx, ex.w0, ex.b0
    law = "weight_and_bias"
    got_w, got_b = a.weight_and_bias(params, w0, b0)
    want_w, want_b = a.weight(params, w0), a.bias(params, w0, b0)
    ex.check(torch.equal(got_w, want_w), law, "weight_and_bias(...)[0] != weight(params, w0)")
    same_b = got_b is None if want_b is None else got_b is not None and torch.equal(got_b, want_b)
    ex.check(same_b, law, f"weight_and_bias(...)[1] = {got_b!r} != bias(...) = {want_b!r}")


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
