"""The closed-form imitation gradient is the gradient autograd takes.

Law: for ``f(θ) = Σ_t w_t‖T_t − Ŵ_t(θ)‖² + v_t‖t_t − b̂_t(θ)‖²`` (``w = 1/numel``:
``imitation_loss``; ``w = 1``: ``squared_frobenius_distance``) and every input-side
approximation (LowRank, Transform, Hybrid), with or without biases and q/k/v sharing,
``frobenius_gradient`` returns ``(∇f, f, Σ‖T − Ŵ‖² + ‖t − b̂‖²)`` equal to autograd's.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from moil.approx import TRANSFORM_KEYS, Adapter, Hybrid, LowRank, OutputHybrid, Sharing, Transform
from moil.objectives import imitation_loss, squared_frobenius_distance
from moil.optim import AdamW
from moil.solvers import Gradient
from moil.solvers.frobenius_gradient import closed_form_weights, frobenius_gradient

TARGETS = ["blk.query", "blk.key", "blk.value"]


@st.composite
def cases(draw):
    kind = draw(st.sampled_from(["lowrank", "transform", "hybrid"]))
    out, inp = draw(st.integers(3, 9)), draw(st.integers(3, 9))
    rank = draw(st.integers(1, min(out, inp)))
    scale = draw(st.sampled_from([1.0, 0.5, 2.0]))
    approx = {
        "lowrank": LowRank(rank, scale=scale),
        "transform": Transform(rank),
        "hybrid": Hybrid(rank, transform_rank=draw(st.integers(1, min(out, inp))), scale=scale),
    }[kind]
    shared = kind != "lowrank" and draw(st.booleans())
    bias = draw(st.booleans())
    loss = draw(st.sampled_from([imitation_loss, squared_frobenius_distance]))
    seed = draw(st.integers(0, 2**16))
    return approx, out, inp, shared, bias, loss, seed


def _problem(approx, out, inp, shared, bias, seed):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    base = {}
    for t in TARGETS:
        base[f"{t}.weight"] = rnd(out, inp)
        if bias:
            base[f"{t}.bias"] = rnd(out)
    sharing = Sharing(TRANSFORM_KEYS) if shared else None
    adapter = Adapter(approx, TARGETS, sharing)
    # Non-zero everywhere (the init has zero B/U), so every term of the gradient is exercised.
    params = {k: rnd(*v.shape) * 0.3 for k, v in adapter.init(base, generator=g).items()}
    merged = adapter.merge(params, base)
    target = {k: v.detach() + rnd(*v.shape) for k, v in merged.items()}
    return adapter, base, params, target


@settings(max_examples=60, deadline=None)
@given(cases())
def test_closed_form_equals_autograd(case):
    approx, out, inp, shared, bias, loss, seed = case
    adapter, base, params, target = _problem(approx, out, inp, shared, bias, seed)
    weight = closed_form_weights(loss, adapter)
    assert weight is not None
    grads, value, squared = frobenius_gradient(adapter, base, params, target, weight)

    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    merged = adapter.merge(leaves, base)
    expected = loss(merged, target)
    auto = dict(zip(leaves, torch.autograd.grad(expected, list(leaves.values()))))

    assert list(grads) == list(params)
    for k in params:
        torch.testing.assert_close(grads[k], auto[k], rtol=1e-9, atol=1e-9, msg=k)
    torch.testing.assert_close(value, expected.detach(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(squared, squared_frobenius_distance(merged, target).detach(), rtol=1e-9, atol=1e-9)


def test_no_closed_form_for_other_losses_or_approximations():
    adapter = Adapter(Hybrid(2), TARGETS)
    assert closed_form_weights(lambda s, t: imitation_loss(s, t), adapter) is None
    assert closed_form_weights(imitation_loss, Adapter(OutputHybrid(2), TARGETS)) is None


def test_mismatched_target_keys_fall_back_to_the_losses_error():
    adapter, base, params, target = _problem(Hybrid(2), 5, 4, True, True, 0)
    del target["blk.key.bias"]
    assert frobenius_gradient(adapter, base, params, target, lambda n: 1.0 / n) is None
    with pytest.raises(KeyError, match="blk.key.bias"):
        Gradient().update(adapter, base, params, AdamW().init(params), AdamW(), target)


@pytest.mark.parametrize("approx", [LowRank(2), Transform(2), Hybrid(2, transform_rank=3)])
def test_gradient_solver_closed_form_matches_autograd_steps(approx):
    """Three AdamW steps of ``Gradient(3)`` land on the same student either way."""
    adapter, base, params, target = _problem(approx, 6, 5, not isinstance(approx, LowRank), True, 1)
    opt = AdamW(lr=1e-2)
    via_autograd = Gradient(3, loss=lambda s, t: imitation_loss(s, t))  # not the same object: autograd
    a, _, ma = Gradient(3).update(adapter, base, params, opt.init(params), opt, target, step=0)
    b, _, mb = via_autograd.update(adapter, base, params, opt.init(params), opt, target, step=0)
    for k in params:
        torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-12)
    for key in ("imitation_loss", "distance"):
        torch.testing.assert_close(ma[key], mb[key], rtol=1e-9, atol=1e-12)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(case=cases(), low=st.sampled_from([torch.bfloat16, torch.float16]), steps=st.sampled_from([1, 2]))
def test_a_float32_target_of_low_precision_weights(case, low, steps):
    """Law: a momentum target kept in float32 for bf16/fp16 weights (MomentumTarget's
    accumulator) is followed like one in the weights' dtype: the closed-form gradient equals
    autograd's of the same loss (tolerance of the low dtype), with and without the reused
    ``Δ`` of ``Gradient(k > 1)``, and the solver's step stays in the params' dtype."""
    approx, out, inp, shared, bias, loss, seed = case
    adapter, base, params, target = _problem(approx, out, inp, shared, bias, seed)
    base = {k: v.to(low) for k, v in base.items()}
    params = {k: v.to(low) for k, v in params.items()}
    target = {k: v.to(low).float() for k, v in target.items()}  # the teacher's values, widened
    weight = closed_form_weights(loss, adapter)
    grads, value, _ = frobenius_gradient(adapter, base, params, target, weight)
    leaves = {k: v.double().requires_grad_(True) for k, v in params.items()}
    expected = loss(adapter.merge(leaves, {k: v.double() for k, v in base.items()}), {k: v.double() for k, v in target.items()})
    auto = dict(zip(leaves, torch.autograd.grad(expected, list(leaves.values()))))
    for k in params:
        assert grads[k].dtype == low
        scale = 1 + float(auto[k].abs().max())
        torch.testing.assert_close(grads[k].double(), auto[k], rtol=0, atol=0.05 * scale, msg=k)
    torch.testing.assert_close(value.double(), expected.detach(), rtol=0.05, atol=0.05)
    opt = AdamW(lr=1e-3)
    new, _, metrics = Gradient(steps).update(adapter, base, params, opt.init(params), opt, target, step=0)
    assert all(new[k].dtype == low and new[k].isfinite().all() for k in params)
    assert metrics["distance"].isfinite()
