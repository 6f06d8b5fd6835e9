"""Reusing ``Δ = T − W0`` (speed) changes no result: cached, scratch and fresh agree bitwise."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from moil.approx import TRANSFORM_KEYS, Adapter, Hybrid, LowRank, Sharing, Transform
from moil.objectives import imitation_loss
from moil.optim import AdamW
from moil.solvers import Gradient
from moil.solvers.frobenius_gradient import closed_form_weights, differences, frobenius_gradient

TARGETS = ["blk.query", "blk.key", "blk.value"]
APPROX = [LowRank(2, scale=0.5), Transform(2), Hybrid(2, transform_rank=3)]


def _problem(approx, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    base = {k: rnd(*s) for t in TARGETS for k, s in ((f"{t}.weight", (7, 5)), (f"{t}.bias", (7,)))}
    sharing = None if isinstance(approx, LowRank) else Sharing(TRANSFORM_KEYS)
    adapter = Adapter(approx, TARGETS, sharing)
    params = {k: rnd(*v.shape) * 0.3 for k, v in adapter.init(base, generator=g).items()}
    target = {k: v + rnd(*v.shape) for k, v in adapter.merge(params, base).items()}
    return adapter, base, params, target


@settings(max_examples=20, deadline=None, derandomize=True)
@given(approx=st.sampled_from(APPROX), seed=st.integers(0, 2**16))
def test_given_differences_equal_the_scratch_ones(approx, seed):
    """Law: ``frobenius_gradient(…, differences(…))`` equals it without them, bit for bit,
    and ``differences`` is ``(T − W0, ‖T − W0‖²)`` per target."""
    adapter, base, params, target = _problem(approx, seed)
    weight = closed_form_weights(imitation_loss, adapter)
    deltas = differences(adapter, base, target)
    for t, (delta, sq) in deltas.items():
        assert torch.equal(delta, target[f"{t}.weight"] - base[f"{t}.weight"])
        torch.testing.assert_close(sq, delta.square().sum(), rtol=1e-5, atol=0)
    fresh = frobenius_gradient(adapter, base, params, target, weight)
    cached = frobenius_gradient(adapter, base, params, target, weight, deltas)
    for a, b in zip(fresh[0].values(), cached[0].values()):
        assert torch.equal(a, b)
    assert torch.equal(fresh[1], cached[1]) and torch.equal(fresh[2], cached[2])


@pytest.mark.parametrize("approx", APPROX)
def test_k_steps_equal_k_single_steps_bitwise(approx):
    """Law: ``Gradient(3)`` (Δ formed once) equals three ``Gradient(1)`` updates (Δ each
    time) at the same task step, parameters, moments and metrics bit for bit."""
    adapter, base, params, target = _problem(approx, 3)
    opt = AdamW(lr=1e-2)
    p3, s3, m3 = Gradient(3).update(adapter, base, params, opt.init(params), opt, target, step=5)
    p1, s1 = params, opt.init(params)
    for _ in range(3):
        p1, s1, m1 = Gradient(1).update(adapter, base, p1, s1, opt, target, step=5)
    for k in params:
        assert torch.equal(p3[k], p1[k]) and torch.equal(s3.exp_avg_sq[k], s1.exp_avg_sq[k]), k
    for key in m3:
        assert torch.equal(m3[key], m1[key]), key


def test_differences_of_other_keys_is_none():
    adapter, base, _params, target = _problem(Hybrid(2), 0)
    del target["blk.key.bias"]
    assert differences(adapter, base, target) is None
