"""moil.optim.AdamW's two kernels: the fused one equals the foreach one, and the foreach
one's clamped square root (a speed-up) changes no bit of its update."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moil.optim import AdamW, _foreach_step, _fusable, _fused_step, _sqrt_floor

SETTINGS = settings(derandomize=True, max_examples=30, deadline=None)
SCALES = torch.tensor([0.0, 1e-30, 1e-22, 1e-19, 1e-17, 1e-12, 1e-4, 1.0], dtype=torch.float64)


def _draw(gen, shape, dtype):
    """Entries whose squares are 0, subnormal, tiny or normal."""
    pick = SCALES[torch.randint(len(SCALES), shape, generator=gen)]
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * pick).to(dtype)


def _unclamped(p, g, m0, v0, *, lr, step, betas, eps, wd):
    """The foreach step as written before the clamp: ``√v + ε√c₂`` straight from ``v``."""
    b1, b2 = betas
    m = torch._foreach_lerp(m0, g, 1.0 - b1)
    v = torch._foreach_mul(v0, b2)
    torch._foreach_addcmul_(v, g, g, value=1.0 - b2)
    c2 = math.sqrt(1.0 - b2**step)
    denom = torch._foreach_sqrt(v)
    torch._foreach_add_(denom, eps * c2)
    new_p = torch._foreach_mul(p, 1.0 - lr * wd)
    torch._foreach_addcdiv_(new_p, m, denom, value=-lr * c2 / (1.0 - b1**step))
    return new_p, m, v


def _run(kernel, seed, dtype, eps, beta2, steps):
    gen = torch.Generator().manual_seed(seed)
    p = [torch.randn(6, 5, generator=gen).to(dtype), torch.randn(6, generator=gen).to(dtype)]
    m, v = [torch.zeros_like(t) for t in p], [torch.zeros_like(t) for t in p]
    for t in range(1, steps + 1):
        g = [_draw(gen, x.shape, dtype) for x in p]
        p, m, v = kernel(p, g, m, v, lr=1e-3, step=t, betas=(0.9, beta2), eps=eps, wd=0.01)
    return [*p, *m, *v]


@SETTINGS
@given(
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    eps=st.sampled_from([1e-8, 1e-6, 1e-12, 1e-30, 0.0]),
    beta2=st.sampled_from([0.98, 0.999]),
    steps=st.integers(1, 4),
)
def test_clamped_sqrt_is_bitwise_the_plain_one(seed, dtype, eps, beta2, steps):
    """Law: with gradients whose squares are 0, subnormal, tiny or normal, the foreach
    step's params and moments equal the unclamped formula's bit for bit."""
    ours = _run(_foreach_step, seed, dtype, eps, beta2, steps)
    plain = _run(_unclamped, seed, dtype, eps, beta2, steps)
    for a, b in zip(ours, plain):
        # rtol = atol = 0: bitwise (ε = 0 with v = 0 gives the same NaN in both)
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@SETTINGS
@given(
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    eps=st.sampled_from([1e-8, 1e-6]),
    beta2=st.sampled_from([0.98, 0.999]),
    steps=st.integers(1, 6),
)
def test_fused_step_equals_the_foreach_step(seed, dtype, eps, beta2, steps):
    """Law: torch's fused kernel and the foreach kernels compute the same AdamW step, to
    rounding (1e-12 in float64, 1e-5 relative in float32), on the same awkward gradients."""
    fused = _run(_fused_step, seed, dtype, eps, beta2, steps)
    foreach = _run(_foreach_step, seed, dtype, eps, beta2, steps)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for a, b in zip(fused, foreach):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * 1e-3)


def test_update_uses_the_fused_kernel_on_new_tensors():
    """Law: ``AdamW.update`` on CPU float tensors is the fused step and leaves its inputs be."""
    gen = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(4, 3, generator=gen)}
    grads = {"w": torch.randn(4, 3, generator=gen)}
    opt = AdamW(lr=1e-2)
    state = opt.init(params)
    before = {k: v.clone() for k, v in params.items()}
    new, new_state = opt.update(grads, state, params)
    want_p, _, want_v = _fused_step([params["w"]], [grads["w"]], [state.exp_avg["w"]], [state.exp_avg_sq["w"]],
                                          lr=1e-2, step=1, betas=opt.betas, eps=opt.eps, wd=opt.weight_decay)
    assert torch.equal(new["w"], want_p[0]) and torch.equal(new_state.exp_avg_sq["w"], want_v[0])
    assert torch.equal(params["w"], before["w"]) and not state.exp_avg["w"].any()


@pytest.mark.parametrize(
    "tensors, fusable",
    [
        ([[torch.zeros(2)], [torch.zeros(2)]], True),
        ([[torch.zeros(2)], [torch.zeros(2, dtype=torch.float64)]], False),
        ([[torch.zeros(2, dtype=torch.complex64)]], False),
    ],
)
def test_fusable_needs_one_float_dtype(tensors, fusable):
    assert _fusable(*tensors) is fusable


def test_floor_is_skipped_where_it_would_not_be_normal():
    """No clamp for ε = 0, fp16 moments or mixed dtypes; a normal floor under (ε·u/8)² otherwise."""
    f32 = [torch.zeros(3)]
    assert _sqrt_floor(0.0, f32) is None
    assert _sqrt_floor(1e-8, [torch.zeros(3, dtype=torch.float16)]) is None
    assert _sqrt_floor(1e-8, [torch.zeros(3), torch.zeros(3, dtype=torch.float64)]) is None
    floor = _sqrt_floor(1e-8, f32)
    assert torch.finfo(torch.float32).tiny <= floor <= (1e-8 * 2.0**-26) ** 2
