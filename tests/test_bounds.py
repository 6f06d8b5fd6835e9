"""Tests for moil.objectives.bounds: the layer and network bounds and the Eckart–Young floor."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

import moil.approx as ma
from moil.objectives import (
    best_low_rank,
    frobenius_distance,
    layer_output_bound,
    network_bound,
    spectral_norm,
)

SETTINGS = settings(derandomize=True, max_examples=30, deadline=None)
F64 = dict(rtol=1e-9, atol=1e-10)
SLACK = 1 + 1e-9  # float64 rounding room on the right-hand side of an inequality

dims = st.integers(min_value=1, max_value=7)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------- single layer


def test_spectral_norm_is_largest_singular_value():
    """‖W‖₂ = σ_max; bf16 input is computed upcast and returned as bf16."""
    w = torch.diag(torch.tensor([3.0, -5.0, 1.0]))
    assert_close(spectral_norm(w), torch.tensor(5.0), rtol=0, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    w = _randn(g, 4, 6)
    assert_close(spectral_norm(w), torch.linalg.svdvals(w)[0], **F64)
    out = spectral_norm(w.bfloat16())
    assert out.dtype == torch.bfloat16
    assert_close(out.double(), torch.linalg.svdvals(w)[0], rtol=2e-2, atol=0)


@SETTINGS
@given(seed=seeds, out_f=dims, in_f=dims, batch=st.integers(1, 5))
def test_layer_bound_chain(seed, out_f, in_f, batch):
    """‖(T−Ŵ)x‖₂ ≤ ‖T−Ŵ‖₂‖x‖₂ ≤ ‖T−Ŵ‖_F‖x‖₂ for every sample x."""
    g = torch.Generator().manual_seed(seed)
    delta, x = _randn(g, out_f, in_f), _randn(g, batch, in_f)
    b = layer_output_bound(delta, x)
    assert b.error.shape == b.spectral.shape == b.frobenius.shape == (batch,)
    assert_close(b.error, torch.linalg.vector_norm(x @ delta.T, dim=-1), **F64)
    assert (b.error <= b.spectral * SLACK).all()
    assert (b.spectral <= b.frobenius * SLACK).all()


def test_layer_bound_attained_on_top_singular_vector():
    """The spectral step is tight: x = v₁ (top right singular vector) gives ‖Δx‖ = ‖Δ‖₂‖x‖."""
    g = torch.Generator().manual_seed(1)
    delta = _randn(g, 5, 4)
    v1 = torch.linalg.svd(delta).Vh[0]
    b = layer_output_bound(delta, v1)
    assert_close(b.error, b.spectral, **F64)


# ----------------------------------------------------------------------------- network bound


def _mlp(weights, x, act):
    h = x
    for i, w in enumerate(weights):
        h = h @ w.T
        if i < len(weights) - 1:
            h = act(h)
    return h


@SETTINGS
@given(
    seed=seeds,
    widths=st.lists(st.integers(1, 6), min_size=2, max_size=5),  # depth 1–4
    scale=st.floats(1e-3, 1.0),
    act=st.sampled_from([torch.tanh, torch.relu]),
)
def test_network_bound_holds(seed, widths, scale, act):
    """‖f_ft(x) − f̂(x)‖ ≤ Σ_l Π_{k>l}‖W_k^ft‖₂ Π_{k<l}‖Ŵ_k‖₂ ‖W_l^ft − Ŵ_l‖₂ ‖x‖ (tanh, ReLU)."""
    g = torch.Generator().manual_seed(seed)
    ft = [_randn(g, o, i) for i, o in zip(widths[:-1], widths[1:], strict=True)]
    approx = [w + scale * _randn(g, *w.shape) for w in ft]
    x = _randn(g, 8, widths[0])
    gap = torch.linalg.vector_norm(_mlp(ft, x, act) - _mlp(approx, x, act), dim=-1)
    bound = network_bound(ft, approx, torch.linalg.vector_norm(x, dim=-1))
    assert bound.shape == (8,)
    assert (gap <= bound * SLACK + 1e-12).all()


def test_network_bound_single_layer_is_spectral_distance():
    """With one layer the bound is ‖W^ft − Ŵ‖₂‖x‖ (no products); a float x_norm gives 0-dim."""
    g = torch.Generator().manual_seed(2)
    w, a = _randn(g, 3, 4), _randn(g, 3, 4)
    out = network_bound([w], [a], 2.0)
    assert out.shape == ()
    assert_close(out, 2.0 * torch.linalg.svdvals(w - a)[0], **F64)


def test_network_bound_hand_computed_two_layers():
    """Diagonal weights: Σ = ‖W2‖·‖W1−Ŵ1‖ + ‖Ŵ1‖·‖W2−Ŵ2‖ = 3·1 + 1·2 = 5 (times ‖x‖ = 1)."""
    w1, a1 = torch.diag(torch.tensor([2.0, 1.0])), torch.diag(torch.tensor([1.0, 1.0]))
    w2, a2 = torch.diag(torch.tensor([3.0, 0.0])), torch.diag(torch.tensor([1.0, 0.0]))
    assert_close(network_bound([w1, w2], [a1, a2], 1.0), torch.tensor(5.0), rtol=0, atol=1e-6)


def test_network_bound_checks_shapes():
    """Layers must chain (W_{l+1}.in == W_l.out), match between lists, and be non-empty."""
    w1, w2 = torch.ones(3, 2), torch.ones(4, 5)
    with pytest.raises(ValueError, match="layer 1 reads 5 features but layer 0 outputs 3"):
        network_bound([w1, w2], [w1, w2], 1.0)
    with pytest.raises(ValueError, match="equal length"):
        network_bound([w1], [], 1.0)
    with pytest.raises(ValueError, match=r"layer 0.*\(3, 2\).*\(2, 3\)"):
        network_bound([w1], [w1.T], 1.0)


# ----------------------------------------------------------------------------- Eckart–Young


@SETTINGS
@given(seed=seeds, out_f=st.integers(1, 6), in_f=st.integers(1, 6), data=st.data())
def test_no_low_rank_student_beats_eckart_young(seed, out_f, in_f, data):
    """For any rank-r B, A: ‖Δ − BA‖_F ≥ best_low_rank(Δ, r).error = sqrt(Σ_{i>r} s_i²)."""
    rank = data.draw(st.integers(1, min(out_f, in_f)), label="rank")
    g = torch.Generator().manual_seed(seed)
    delta = _randn(g, out_f, in_f)
    fit = best_low_rank(delta, rank)
    s = torch.linalg.svdvals(delta)
    assert_close(fit.error, torch.linalg.vector_norm(s[rank:]), **F64)
    for _ in range(5):
        b, a = _randn(g, out_f, rank), _randn(g, rank, in_f) * data.draw(st.floats(0.01, 2.0))
        assert torch.linalg.matrix_norm(delta - b @ a) >= fit.error * (1 - 1e-9)


@SETTINGS
@given(seed=seeds, out_f=st.integers(1, 6), in_f=st.integers(1, 6), data=st.data())
def test_svd_student_attains_the_floor(seed, out_f, in_f, data):
    """LowRank.weight with best_low_rank's params is W0 + Δ_r, at distance `error` from W0 + Δ."""
    rank = data.draw(st.integers(1, min(out_f, in_f)), label="rank")
    g = torch.Generator().manual_seed(seed)
    w0, delta = _randn(g, out_f, in_f), _randn(g, out_f, in_f)
    fit = best_low_rank(delta, rank)
    assert fit.lora_b.shape == (out_f, rank) and fit.lora_a.shape == (rank, in_f)
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    delta_r = u[:, :rank] @ torch.diag(s[:rank]) @ vh[:rank]
    w_hat = ma.LowRank(rank=rank).weight({"lora_a": fit.lora_a, "lora_b": fit.lora_b}, w0)
    assert_close(w_hat, w0 + delta_r, **F64)
    dist = frobenius_distance({"w": w_hat}, {"w": w0 + delta})
    assert_close(dist, fit.error, **F64)


@SETTINGS
@given(seed=seeds, out_f=st.integers(1, 6), in_f=st.integers(1, 6), data=st.data())
def test_hybrid_with_zero_transform_attains_eckart_young(seed, out_f, in_f, data):
    """Hybrid ⊇ LowRank: SVD lora params with a zero transform give exactly the EY error."""
    rank = data.draw(st.integers(1, min(out_f, in_f)), label="rank")
    g = torch.Generator().manual_seed(seed)
    w0, delta = _randn(g, out_f, in_f), _randn(g, out_f, in_f)
    fit = best_low_rank(delta, rank)
    hybrid = ma.Hybrid(rank=rank)
    params = hybrid.init(w0, generator=g)  # transform_up, biases = 0; transform_down random
    params.update(lora_a=fit.lora_a, lora_b=fit.lora_b)
    dist = frobenius_distance({"w": hybrid.weight(params, w0)}, {"w": w0 + delta})
    assert_close(dist, fit.error, **F64)


@SETTINGS
@given(
    seed=seeds,
    rank=st.integers(1, 2),
    extra=st.integers(0, 2),
    side=st.sampled_from(["input", "output"]),
)
def test_hybrid_fits_exactly_what_low_rank_cannot(seed, rank, extra, side):
    """T = (W0 + B A)(I + U D) (input side; (I + U D)(W0 + B A) output side), Δ = T − W0 of
    rank 2r: Hybrid with those factors has error 0, while best rank-r LowRank error > 0."""
    out_f, in_f = 2 * rank + extra + 1, 2 * rank + extra
    d = in_f if side == "input" else out_f
    g = torch.Generator().manual_seed(seed)
    w0 = _randn(g, out_f, in_f)
    params = {
        "lora_a": _randn(g, rank, in_f),
        "lora_b": _randn(g, out_f, rank),
        "transform_down": _randn(g, rank, d),
        "transform_down_bias": torch.zeros(rank, dtype=torch.float64),
        "transform_up": _randn(g, d, rank),
        "transform_up_bias": torch.zeros(d, dtype=torch.float64),
    }
    low = w0 + params["lora_b"] @ params["lora_a"]
    mix = torch.eye(d, dtype=torch.float64) + params["transform_up"] @ params["transform_down"]
    target = low @ mix if side == "input" else mix @ low
    student = ma.on_side(ma.Hybrid, side)(rank=rank).weight(params, w0)
    zero = torch.tensor(0.0, dtype=torch.float64)
    assert_close(frobenius_distance({"w": student}, {"w": target}), zero, rtol=0, atol=1e-10)
    assert torch.linalg.matrix_rank(target - w0) == 2 * rank
    assert best_low_rank(target - w0, rank).error > 1e-6


def test_best_low_rank_full_rank_and_validation():
    """r = min(out, in) reproduces Δ with error 0; bad ranks raise naming the range;
    bf16 in → bf16 out."""
    g = torch.Generator().manual_seed(4)
    delta = _randn(g, 3, 5)
    fit = best_low_rank(delta, 3)
    assert_close(fit.lora_b @ fit.lora_a, delta, **F64)
    assert fit.error == 0
    for bad in (0, 4, 1.5, True):
        with pytest.raises(
            ValueError, match=r"rank must be an integer in \[1, min\(out, in\)\] = \[1, 3\]"
        ):
            best_low_rank(delta, bad)
    half = best_low_rank(delta.bfloat16(), 2)
    assert {half.lora_a.dtype, half.lora_b.dtype, half.error.dtype} == {torch.bfloat16}
    assert_close(half.error.double(), best_low_rank(delta, 2).error, rtol=2e-2, atol=0)
