r"""The imitation gradient in closed form, without forming ``Ŵ`` or autograd.

For the Frobenius imitation losses (:func:`moil.objectives.imitation_loss`, each key's
mean; :func:`moil.objectives.squared_frobenius_distance`, each key's sum)

    ``f(θ) = Σ_t w_t ‖T_t − Ŵ_t(θ)‖² + v_t ‖t_t − b̂_t(θ)‖²``

the input-side hybrids (:class:`~moil.approx.LowRank`, :class:`~moil.approx.Transform`,
:class:`~moil.approx.Hybrid`) write ``Ŵ = W0 + P Q`` with thin factors: ``P = [s·B, L U]``
``(out, r + r_t)``, ``Q = [A; D]`` ``(r + r_t, in)``, ``L = W0 + s·B A``,
``L U = W0 U + s·B (A U)``. With ``Δ = T − W0`` and ``E = Δ − P Q``:

* ``‖E‖² = ‖Δ‖² − 2⟨PᵀΔ, Q⟩ + ⟨PᵀP, Q Qᵀ⟩``;
* ``E Qᵀ = Δ Qᵀ − P (Q Qᵀ)`` and ``Pᵀ E = PᵀΔ − (PᵀP) Q``;
* with ``G = −2w`` and ``g = −2v (t − b̂)``, ``shift = U a + c``, ``M = I + U D``:
  ``∂B = s·(G·E Mᵀ Aᵀ + g (A·shift)ᵀ)``, ``∂A = s·Bᵀ(G·E Mᵀ + g shiftᵀ)``,
  ``∂D = G·(L U)ᵀ E``, ``∂U = Lᵀ X`` with ``X = G·E Dᵀ + g aᵀ``, ``∂a = Uᵀ Lᵀ g``,
  ``∂c = Lᵀ g``.

The dense products are ``W0 U``, ``PᵀΔ``, ``Δ Qᵀ`` and ``W0ᵀ X``: ``2·out·in·(2r + 4r_t)``
flops per target against autograd's ``2·out·in·(3r + 6r_t)`` plus its elementwise
passes over ``Ŵ`` and ``E``; no ``(out, in)`` tensor but ``Δ`` is made. Shared
parameters (q/k/v's ``A`` and transform) sum their members' terms.

The loss value is computed from the expansion, so its absolute error is about
``ε‖T − W0‖²`` (not relative to the loss); the gradient has no such cancellation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from moil.approx import Adapter, Hybrid, LowRank, Transform
from moil.objectives import imitation_loss, squared_frobenius_distance

__all__ = ["closed_form_weights", "differences", "frobenius_gradient"]

#: The losses with a closed form, and each key's weight ``w = weighting(numel)``.
_WEIGHTS: dict[Callable, Callable[[int], float]] = {
    imitation_loss: lambda n: 1.0 / n,
    squared_frobenius_distance: lambda n: 1.0,
}


def closed_form_weights(loss: Callable, adapter: Adapter) -> Callable[[int], float] | None:
    """Each key's weight ``numel -> w`` if ``loss`` on ``adapter`` has the closed form, else ``None``."""
    if type(adapter.approx) not in (LowRank, Transform, Hybrid):
        return None
    return _WEIGHTS.get(loss)


def frobenius_gradient(
    adapter: Adapter,
    base: Mapping[str, Tensor],
    params: Mapping[str, Tensor],
    target: Mapping[str, Tensor],
    weight: Callable[[int], float],
    deltas: Mapping[str, tuple[Tensor, Tensor]] | None = None,
) -> tuple[dict[str, Tensor], Tensor, Tensor] | None:
    """``(∇_θ f, f, Σ_t ‖T_t − Ŵ_t‖² + ‖t_t − b̂_t‖²)`` for the module docstring's ``f``.

    ``deltas``: :func:`differences` of ``base`` and ``target``, to reuse over several calls
    (``Gradient(k)``'s steps); without it each ``Δ_t`` is formed in one scratch buffer
    reused target after target. Returns ``None`` when ``target``'s keys are not the merged
    student's (the caller's autograd path then raises the loss's own error). ``params`` and
    every input are untouched; the gradients are new tensors keyed as ``params``.
    """
    approx = adapter.approx
    views = adapter.views(params)
    if not _same_keys(adapter, approx, base, target):
        return None
    grads: dict[str, Tensor] = {}
    loss, distance = [], []
    shared: dict[tuple[int, ...], dict[str, Tensor]] = {}
    scratch: dict[tuple, Tensor] = {}
    for t in adapter.targets:
        w0, b0 = base[f"{t}.weight"], base.get(f"{t}.bias")
        tb = target.get(f"{t}.bias")
        tb = None if tb is None else tb.detach().to(w0.dtype)  # a float32 target of bf16 weights
        # Terms of the input side alone (A and the transform) once per sharing group (q/k/v).
        key = tuple(id(views[t][n]) for n in _INPUT_SIDE if n in views[t])
        if key not in shared:
            shared[key] = _input_terms(approx, views[t])
        tw = target[f"{t}.weight"].detach()
        delta = deltas[t] if deltas is not None else _delta(tw, w0, scratch)
        g, sq_w, sq_b = _one_target(approx, views[t], shared[key], w0, b0, delta, tb, weight)
        for name, value in g.items():
            key = adapter.key(t, name)
            grads[key] = grads[key] + value if key in grads else value
        loss.append(weight(w0.numel()) * sq_w + (0.0 if tb is None else weight(tb.numel()) * sq_b))
        distance.append(sq_w + sq_b)
    missing = [k for k in params if k not in grads]
    for k in missing:  # a parameter no target reads
        grads[k] = torch.zeros_like(params[k])
    return {k: grads[k] for k in params}, torch.stack(loss).sum(), torch.stack(distance).sum()


def _same_keys(adapter, approx, base, target) -> bool:
    adds_bias = not isinstance(approx, LowRank)
    want = set()
    for t in adapter.targets:
        want.add(f"{t}.weight")
        if f"{t}.bias" in base or adds_bias:
            want.add(f"{t}.bias")
    return want == set(target)


_INPUT_SIDE = ("lora_a", "transform_down", "transform_down_bias", "transform_up", "transform_up_bias")


def _input_terms(approx, p) -> dict[str, Tensor]:
    """``Q = [A; D]``, ``Q Qᵀ``, ``A U``, ``shift = U a + c`` and ``A·shift``: what depends
    on the input side only, so members of a sharing group reuse it."""
    low = isinstance(approx, (LowRank, Hybrid))
    tf = isinstance(approx, (Transform, Hybrid))
    factors = ([p["lora_a"]] if low else []) + ([p["transform_down"]] if tf else [])
    qm = torch.cat(factors, 0) if len(factors) > 1 else factors[0]
    out = {"qm": qm, "qq": qm @ qm.T}
    if tf:
        u = p["transform_up"]
        out["shift"] = torch.addmv(p["transform_up_bias"], u, p["transform_down_bias"])
        if low:
            out["au"] = p["lora_a"] @ u  # (r, r_t)
            out["a_shift"] = p["lora_a"] @ out["shift"]
    return out


def _one_target(approx, p, shared, w0, b0, delta, tb, weight):
    """One target's gradient terms, ``‖T − Ŵ‖²`` and ``‖t − b̂‖²``.

    The scalar ``G = −2w`` rides on the thin products' ``alpha``/``beta`` (no extra passes
    over their results). ``W0 shift`` and ``W0ᵀ g`` stay matrix-vector products: appended
    as a column to ``U`` (``X``), they made MKL's ``(768, 768) @ (768, 97)`` 20–30 % slower
    than the ``(768, 96)`` one plus the product with a vector.
    """
    low = isinstance(approx, (LowRank, Hybrid))
    tf = isinstance(approx, (Transform, Hybrid))
    s = approx.scale if low else 1.0
    gw = -2.0 * weight(w0.numel())
    delta, sq_delta = delta
    qm, qq = shared["qm"], shared["qq"]
    r = p["lora_a"].shape[0] if low else 0
    if low:
        a_, b_ = p["lora_a"], p["lora_b"]
        sb = b_ if s == 1.0 else b_ * s
    if tf:
        a, u = p["transform_down_bias"], p["transform_up"]
        pm = w0 @ u
        if low:
            pm = torch.cat([sb, pm], 1)  # P = [s·B, L U], L U = W0 U + s·B (A U)
            pm[:, r:].addmm_(b_, shared["au"], alpha=s)
    else:
        pm = sb
    ptp = pm.T @ pm
    pt_e = pm.T @ delta  # PᵀΔ now, G·PᵀE below
    cross = torch.dot(pt_e.reshape(-1), qm.reshape(-1))  # ⟨PᵀΔ, Q⟩
    sq_w = (sq_delta - 2 * cross + torch.dot(ptp.reshape(-1), qq.reshape(-1))).clamp_min(0)
    pt_e.addmm_(ptp, qm, beta=gw, alpha=-gw)  # G·(PᵀΔ − PᵀP Q) (r + r_t, in)
    e_qt = delta @ qm.T
    e_qt.addmm_(pm, qq, beta=gw, alpha=-gw)  # G·(Δ Qᵀ − P Q Qᵀ) = G·E Qᵀ (out, r + r_t)
    grads: dict[str, Tensor] = {}
    # The bias: LowRank leaves b̂ = b0 (a constant term); the transform shifts it.
    if tf:
        l_shift = w0 @ shared["shift"]
        if low:
            l_shift = torch.addmv(l_shift, b_, shared["a_shift"], alpha=s)
        eb = tb - (l_shift if b0 is None else l_shift + b0)
        gb = -2.0 * weight(tb.numel()) * eb
    else:
        eb = None if tb is None else tb - b0
    sq_b = eb.square().sum() if eb is not None else torch.zeros((), dtype=sq_w.dtype, device=sq_w.device)
    if low and not tf:
        grads["lora_b"] = e_qt if s == 1.0 else s * e_qt
        grads["lora_a"] = pt_e
        return grads, sq_w, sq_b
    x = torch.addr(e_qt[:, r:], gb, a)  # X = G·E Dᵀ + g aᵀ (out, r_t)
    du, lt_gb = w0.T @ x, w0.T @ gb
    if low:
        bt_x, bt_gb = b_.T @ x, b_.T @ gb
        du.addmm_(a_.T, bt_x, alpha=s)  # Lᵀ = W0ᵀ + s·Aᵀ Bᵀ
        lt_gb = torch.addmv(lt_gb, a_.T, bt_gb, alpha=s)
        lora_b = torch.addmm(e_qt[:, :r], e_qt[:, r:], shared["au"].T, beta=s, alpha=s)
        grads["lora_b"] = lora_b.addr_(gb, shared["a_shift"], alpha=s)
        # G·PᵀE[:r] + s·(G·Bᵀ E Dᵀ) Uᵀ + s·(Bᵀg) shiftᵀ, with Bᵀ X = G·Bᵀ E Dᵀ + (Bᵀg) aᵀ
        # and shift = U a + c.
        lora_a = torch.addmm(pt_e[:r], bt_x, u.T, alpha=s)
        grads["lora_a"] = lora_a.addr_(bt_gb, p["transform_up_bias"], alpha=s)
    grads["transform_down"] = pt_e[r:]
    grads["transform_up"] = du
    grads["transform_down_bias"] = u.T @ lt_gb
    grads["transform_up_bias"] = lt_gb
    return grads, sq_w, sq_b


def differences(adapter: Adapter, base: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> dict | None:
    """``{t: (Δ_t = T_t − W0_t, ‖Δ_t‖²)}`` for every target of ``adapter`` (new tensors: one
    more ``(out, in)`` copy per target while they are reused), or ``None`` where
    :func:`frobenius_gradient` has no closed form for these keys."""
    if not _same_keys(adapter, adapter.approx, base, target):
        return None
    return {t: _delta(target[f"{t}.weight"].detach(), base[f"{t}.weight"]) for t in adapter.targets}


def _delta(tw: Tensor, w0: Tensor, scratch: dict | None = None) -> tuple[Tensor, Tensor]:
    """``(Δ = T − W0, ‖Δ‖²)``; into ``scratch``'s buffer of that shape when given (the
    previous target's ``Δ`` is dead by then: no result of :func:`_one_target` views it)."""
    if scratch is None:
        delta = (tw - w0).to(w0.dtype)  # a wider (float32) target of bf16 weights: Δ in W0's dtype
    else:
        key = (tuple(w0.shape), w0.dtype, w0.device)
        if key not in scratch:
            scratch[key] = torch.empty(w0.shape, dtype=w0.dtype, device=w0.device)
        delta = torch.sub(tw, w0.detach(), out=scratch[key])
    flat = delta.reshape(-1)
    return delta, torch.dot(flat, flat)
