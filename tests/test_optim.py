"""moil.optim.AdamW against torch.optim.AdamW, and its pure, explicit-state contract."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moil.optim import AdamW
from moil.schedules import WarmupLinearDecay

SETTINGS = settings(derandomize=True, max_examples=12, deadline=None)


def _problem(seed: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(seed)
    params = {"w": torch.randn(5, 3, generator=g, dtype=dtype), "b": torch.randn(5, generator=g, dtype=dtype)}
    grads = [
        {k: torch.randn(v.shape, generator=g, dtype=dtype) for k, v in params.items()} for _ in range(40)
    ]
    return params, grads


@SETTINGS
@given(
    seed=st.integers(0, 2**16),
    beta1=st.sampled_from([0.0, 0.5, 0.9]),
    beta2=st.sampled_from([0.9, 0.98, 0.999]),
    weight_decay=st.sampled_from([0.0, 0.01, 0.3]),
    warmup=st.sampled_from([0.0, 0.1, 0.5]),
)
def test_matches_torch_adamw_over_many_steps(seed, beta1, beta2, weight_decay, warmup):
    """Law: 40 steps of moil's AdamW equal 40 steps of torch.optim.AdamW (decoupled weight
    decay, both betas, bias correction) with the lr of step t set to schedule(t), to
    1e-12 in float64."""
    params, grads = _problem(seed, torch.float64)
    schedule = WarmupLinearDecay(3e-2, 40, warmup=warmup)
    ours = AdamW(lr=schedule, betas=(beta1, beta2), eps=1e-8, weight_decay=weight_decay)
    state, p = ours.init(params), dict(params)

    leaves = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    theirs = torch.optim.AdamW(
        list(leaves.values()), lr=schedule(0), betas=(beta1, beta2), eps=1e-8, weight_decay=weight_decay
    )
    for t, g in enumerate(grads):
        p, state = ours.update(g, state, p)
        for group in theirs.param_groups:
            group["lr"] = schedule(t)
        for k, leaf in leaves.items():
            leaf.grad = g[k].clone()
        theirs.step()
    for k, leaf in leaves.items():
        torch.testing.assert_close(p[k], leaf.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(state.exp_avg[k], theirs.state[leaf]["exp_avg"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(state.exp_avg_sq[k], theirs.state[leaf]["exp_avg_sq"], rtol=1e-12, atol=1e-12)
    assert state.step == len(grads)


def test_update_leaves_its_inputs_intact():
    """A step returns new tensors: params, grads and the old state are unchanged, so a bad
    step (NaN loss) can be dropped by keeping the old state."""
    params, grads = _problem(0, torch.float32)
    opt = AdamW(lr=1e-2)
    state = opt.init(params)
    state, p = opt.update(grads[0], state, params)[1], params
    before = ({k: v.clone() for k, v in params.items()}, {k: v.clone() for k, v in state.exp_avg.items()})
    opt.update(grads[1], state, p)
    assert all(torch.equal(params[k], before[0][k]) for k in params)
    assert all(torch.equal(state.exp_avg[k], before[1][k]) for k in params)


def test_lr_override_equals_a_constant_lr():
    """``update(..., lr=η)`` is the update of ``AdamW(lr=η)`` (the solver's k steps per task step)."""
    params, grads = _problem(1, torch.float64)
    scheduled, fixed = AdamW(lr=WarmupLinearDecay(1.0, 10)), AdamW(lr=0.003)
    a, sa = scheduled.update(grads[0], scheduled.init(params), params, lr=0.003)
    b, sb = fixed.update(grads[0], fixed.init(params), params)
    assert all(torch.equal(a[k], b[k]) for k in a) and sa.step == sb.step == 1


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: AdamW(lr="1e-3"), TypeError, "lr='1e-3'"),
        (lambda: AdamW(lr=float("inf")), ValueError, "lr=inf"),
        (lambda: AdamW(lr=-0.01), ValueError, "lr=-0.01"),
        (lambda: AdamW(betas=(0.9, 1.0)), ValueError, "betas"),
        (lambda: AdamW(weight_decay=-1), ValueError, "weight_decay=-1"),
        (lambda: AdamW(eps=float("nan")), ValueError, "eps=nan"),
    ],
)
def test_bad_hyper_parameters_fail_at_construction(build, error, match):
    """Bad values are refused where they enter, naming the field and the value."""
    with pytest.raises(error, match=match):
        build()


def test_bad_schedule_value_names_the_step():
    """A user schedule giving a negative lr fails at that step, naming it."""
    opt = AdamW(lr=lambda step: 1e-3 - step * 1e-3)
    params, grads = _problem(2, torch.float32)
    state = opt.init(params)
    params, state = opt.update(grads[0], state, params)  # lr(0) = 1e-3
    params, state = opt.update(grads[1], state, params)  # lr(1) = 0
    with pytest.raises(ValueError, match="at step 2"):
        opt.update(grads[2], state, params)
