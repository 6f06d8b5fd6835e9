"""moil.solvers.Gradient: k optimiser steps on the imitation loss, checked by hand."""

from __future__ import annotations

import pytest
import torch

from moil.approx import TRANSFORM_KEYS, Adapter, Hybrid, LowRank, Sharing
from moil.objectives import frobenius_distance, imitation_loss
from moil.optim import AdamW
from moil.solvers import Gradient

TARGETS = ["blk.query", "blk.key", "blk.value"]


def _setup(seed: int = 0, approx=None):
    g = torch.Generator().manual_seed(seed)
    base = {}
    for t in TARGETS:
        base[f"{t}.weight"] = torch.randn(6, 5, generator=g, dtype=torch.float64)
        base[f"{t}.bias"] = torch.randn(6, generator=g, dtype=torch.float64)
    target = {k: v + 0.1 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in base.items()}
    approx = approx or Hybrid(2)
    adapter = Adapter(approx, TARGETS, Sharing(TRANSFORM_KEYS) if isinstance(approx, Hybrid) else None)
    params = adapter.init(base, generator=torch.Generator().manual_seed(seed + 1))
    params = {k: v + 0.01 for k, v in params.items()}  # off the init, so every gradient is non-zero
    return base, target, adapter, params


def _by_hand(adapter, base, params, target, opt, steps, loss=imitation_loss):
    state = opt.init(params)
    for _ in range(steps):
        grads = torch.func.grad(lambda p: loss(adapter.merge(p, base), target))(params)
        params, state = opt.update(grads, state, params)
    return params, state


@pytest.mark.parametrize("steps", [1, 3])
def test_k_steps_equal_k_adamw_steps_on_the_imitation_gradient(steps):
    """Law: Gradient(k).update = k AdamW steps on ∇θ imitation_loss(merge(θ), W̄), the
    gradient taken by torch.func.grad here (float64, 1e-12)."""
    base, target, adapter, params = _setup()
    opt = AdamW(lr=1e-2)
    got, state, _ = Gradient(steps=steps).update(adapter, base, params, opt.init(params), opt, target)
    want, want_state = _by_hand(adapter, base, params, target, opt, steps)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-12, atol=1e-12)
    assert state.step == want_state.step == steps


def test_metrics_are_measured_before_the_last_step():
    """``imitation_loss`` and ``distance`` are those of the parameters the last gradient saw."""
    base, target, adapter, params = _setup(2)
    opt = AdamW(lr=1e-2)
    _, _, metrics = Gradient(steps=1).update(adapter, base, params, opt.init(params), opt, target)
    merged = adapter.merge(params, base)
    assert metrics["imitation_loss"] == pytest.approx(float(imitation_loss(merged, target)), rel=1e-12)
    assert metrics["distance"] == pytest.approx(float(frobenius_distance(merged, target)), rel=1e-12)


def test_many_steps_close_the_gap():
    """Imitation by gradient moves the student towards its target: the Frobenius distance
    after 200 steps is below its start."""
    base, target, adapter, params = _setup(3, LowRank(3))
    opt = AdamW(lr=1e-2, weight_decay=0.0)
    start = float(frobenius_distance(adapter.merge(params, base), target))
    got, _, _ = Gradient(steps=200).update(adapter, base, params, opt.init(params), opt, target)
    assert float(frobenius_distance(adapter.merge(got, base), target)) < 0.9 * start


def test_custom_loss_and_untouched_inputs():
    """A user loss is the one differentiated; params, base and target are not modified."""
    base, target, adapter, params = _setup(4)
    before = [{k: v.clone() for k, v in d.items()} for d in (base, target, params)]
    opt = AdamW(lr=1e-2)
    got, _, _ = Gradient(steps=2, loss=frobenius_distance).update(adapter, base, params, opt.init(params), opt, target)
    want, _ = _by_hand(adapter, base, params, target, opt, 2, loss=frobenius_distance)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-12, atol=1e-12)
    for old, now in zip(before, (base, target, params)):
        assert all(torch.equal(old[k], now[k]) for k in old)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_steps_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match=f"steps={bad!r}"):
        Gradient(steps=bad)
