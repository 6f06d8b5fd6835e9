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

__all__ = ["closed_form_weights", "frobenius_gradient"]

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
) -> tuple[dict[str, Tensor], Tensor, Tensor] | None:
    """``(∇_θ f, f, Σ_t ‖T_t − Ŵ_t‖² + ‖t_t − b̂_t‖²)`` for the module docstring's ``f``.

    Returns ``None`` when ``target``'s keys are not the merged student's (the caller's
    autograd path then raises the loss's own error). ``params`` and every input are
    untouched; the gradients are new tensors keyed as ``params``.
    """
    approx = adapter.approx
    views = adapter.views(params)
    if not _same_keys(adapter, approx, base, target):
        return None
    grads: dict[str, Tensor] = {}
    loss, distance = [], []
    shared: dict[tuple[int, ...], dict[str, Tensor]] = {}
    for t in adapter.targets:
        w0, b0 = base[f"{t}.weight"], base.get(f"{t}.bias")
        tb = target.get(f"{t}.bias")
        # Terms of the input side alone (A and the transform) once per sharing group (q/k/v).
        key = tuple(id(views[t][n]) for n in _INPUT_SIDE if n in views[t])
        if key not in shared:
            shared[key] = _input_terms(approx, views[t])
        g, sq_w, sq_b = _one_target(approx, views[t], shared[key], w0, b0, target[f"{t}.weight"].detach(), tb, weight)
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
        out["shift"] = torch.addmv(p["transform_up_bias"], p["transform_up"], p["transform_down_bias"])
        if low:
            out["au"] = p["lora_a"] @ p["transform_up"]  # (r, r_t)
            out["a_shift"] = p["lora_a"] @ out["shift"]
    return out


def _one_target(approx, p, shared, w0, b0, tw, tb, weight):
    low = isinstance(approx, (LowRank, Hybrid))
    tf = isinstance(approx, (Transform, Hybrid))
    s = approx.scale if low else 1.0
    gw = -2.0 * weight(w0.numel())
    delta = tw - w0
    qm, qq = shared["qm"], shared["qq"]
    if low:
        a_, b_ = p["lora_a"], p["lora_b"]
        r = a_.shape[0]
    if tf:
        a, u = p["transform_down_bias"], p["transform_up"]
        lu = w0 @ u
        if low:
            au = shared["au"]
            lu = torch.addmm(lu, b_, au, alpha=s)
    factors_p = ([b_ if s == 1.0 else b_ * s] if low else []) + ([lu] if tf else [])
    pm = torch.cat(factors_p, 1) if len(factors_p) > 1 else factors_p[0]
    pt_delta = pm.T @ delta
    ptp = pm.T @ pm
    flat = delta.reshape(-1)
    sq_w = (torch.dot(flat, flat) - 2 * (pt_delta * qm).sum() + (ptp * qq).sum()).clamp_min(0)
    e_qt = delta @ qm.T - pm @ qq  # E Qᵀ (out, r + r_t)
    pt_e = pt_delta - ptp @ qm  # Pᵀ E (r + r_t, in)
    grads: dict[str, Tensor] = {}
    # The bias: LowRank leaves b̂ = b0 (a constant term); the transform shifts it.
    if tf:
        shift = shared["shift"]
        l_shift = w0 @ shift
        if low:
            a_shift = shared["a_shift"]
            l_shift = torch.addmv(l_shift, b_, a_shift, alpha=s)
        eb = tb - (l_shift if b0 is None else l_shift + b0)
        gb = -2.0 * weight(tb.numel()) * eb
    else:
        eb = None if tb is None else tb - b0
    sq_b = eb.square().sum() if eb is not None else torch.zeros((), dtype=sq_w.dtype, device=sq_w.device)
    if low:
        e_at = e_qt[:, :r]
        if tf:
            e_dt = e_qt[:, r:]
            bt_edt = b_.T @ e_dt
            grads["lora_b"] = s * torch.addr(gw * torch.addmm(e_at, e_dt, au.T), gb, a_shift)
            grads["lora_a"] = torch.addr(gw * torch.addmm(pt_e[:r], bt_edt, u.T, alpha=s), b_.T @ gb, shift, alpha=s)
        else:
            grads["lora_b"] = (s * gw) * e_at
            grads["lora_a"] = gw * pt_e
    if tf:
        e_dt = e_qt[:, r:] if low else e_qt
        x = torch.addr(gw * e_dt, gb, a)  # (out, r_t)
        du = w0.T @ x
        lt_gb = w0.T @ gb
        if low:
            du = torch.addmm(du, a_.T, b_.T @ x, alpha=s)
            lt_gb = torch.addmv(lt_gb, a_.T, b_.T @ gb, alpha=s)
        grads["transform_down"] = gw * (pt_e[r:] if low else pt_e)
        grads["transform_up"] = du
        grads["transform_down_bias"] = u.T @ lt_gb
        grads["transform_up_bias"] = lt_gb
    return grads, sq_w, sq_b
