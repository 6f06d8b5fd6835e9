"""Tests for moil.approx.LowRank: Ŵ = W0 + s·B A, b̂ = b0."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moil.approx import LowRank
from moil.testing import adapter_params, check_approximation, weight_shapes, weights

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None)
EXACT = {"rtol": 1e-12, "atol": 1e-12}  # float64, sizes ≤ 12: far above rounding


@pytest.mark.parametrize(
    "approx", [LowRank(1), LowRank(3), LowRank(2, scale=0.5), LowRank(2, scale=-2.0)], ids=repr
)
def test_contract_laws_with_factored_reference(approx):
    """Every contract law holds, and x Ŵᵀ + b̂ = x W0ᵀ + s (x Aᵀ) Bᵀ + b0 (factored == merged)."""

    def reference(params, w0, b0, x):
        y = x @ w0.T + approx.scale * ((x @ params["lora_a"].T) @ params["lora_b"].T)
        return y if b0 is None else y + b0

    check_approximation(approx, reference=reference, max_examples=20)


def test_hand_checkable_merge():
    """W0 = [[1, 2], [3, 4]], B = [[1], [2]], A = [[10, 20]], s = 0.5 ⇒ Ŵ = [[6, 12], [13, 24]]."""
    w0 = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    params = {
        "lora_a": torch.tensor([[10.0, 20.0]], dtype=torch.float64),
        "lora_b": torch.tensor([[1.0], [2.0]], dtype=torch.float64),
    }
    want = torch.tensor([[6.0, 12.0], [13.0, 24.0]], dtype=torch.float64)
    torch.testing.assert_close(LowRank(1, scale=0.5).weight(params, w0), want, rtol=0, atol=0)


@SETTINGS
@given(data=st.data(), rank=st.integers(1, 3), scale=st.sampled_from([1.0, 0.25, -3.0]))
def test_weight_is_w0_plus_scaled_product(data, rank, scale):
    """Ŵ = W0 + s·B A and b̂ = b0 (None stays None), for random A, B away from init."""
    approx = LowRank(rank, scale=scale)
    w0 = data.draw(weights(weight_shapes(rank, 9)))
    b0 = data.draw(st.none() | weights((w0.shape[0],)))
    p = data.draw(adapter_params(approx, w0))
    want = w0 + scale * p["lora_b"] @ p["lora_a"]
    torch.testing.assert_close(approx.weight(p, w0), want, **EXACT)
    assert approx.bias(p, w0, b0) is b0


@SETTINGS
@given(shape=weight_shapes(3, 12), rank=st.integers(1, 3), seed=st.integers(0, 2**31))
def test_init_is_kaiming_a_and_zero_b(shape, rank, seed):
    """A ~ U(−1/√in, 1/√in) (Kaiming-uniform, a = √5) of shape (r, in); B = 0 of shape (out, r)."""
    out_f, in_f = shape
    w0 = torch.zeros(shape, dtype=torch.float64)
    p = LowRank(rank).init(w0, generator=torch.Generator().manual_seed(seed))
    assert p["lora_a"].shape == (rank, in_f) and p["lora_b"].shape == (out_f, rank)
    assert p["lora_a"].abs().max() <= 1 / math.sqrt(in_f)
    assert not p["lora_b"].count_nonzero()


@pytest.mark.parametrize("shape,rank,want", [((6, 5), 2, 22), ((3, 7), 3, 30), ((1, 1), 1, 2)])
def test_num_params_is_rank_times_in_plus_out(shape, rank, want):
    """num_params(out, in) = r·(in + out)."""
    assert LowRank(rank).num_params(*shape) == want


def test_only_lora_a_is_shareable():
    """A (r, in) reads the input alone, so it is shareable; B (out, r) is not."""
    assert LowRank(2).shareable == frozenset({"lora_a"})


@SETTINGS
@given(w0=weights((5, 4)), seed=st.integers(0, 2**31), scale=st.sampled_from([1.0, -0.5]))
def test_grad_matches_closed_form(w0, seed, scale):
    """For f = Σ G ⊙ (W0 + s B A): ∂f/∂B = s G Aᵀ and ∂f/∂A = s Bᵀ G (torch.func.grad)."""
    approx = LowRank(2, scale=scale)
    g = torch.Generator().manual_seed(seed)
    p = {
        k: torch.randn(v.shape, generator=g, dtype=torch.float64)
        for k, v in approx.init(w0).items()
    }
    cot = torch.randn(5, 4, generator=g, dtype=torch.float64)
    grads = torch.func.grad(lambda q: (approx.weight(q, w0) * cot).sum())(p)
    torch.testing.assert_close(grads["lora_b"], scale * cot @ p["lora_a"].T, **EXACT)
    torch.testing.assert_close(grads["lora_a"], scale * p["lora_b"].T @ cot, **EXACT)


def test_vmap_over_a_batch_of_params_equals_a_loop():
    """vmap_k Ŵ(p_k) = [W0 + s B_k A_k]_k, and vmap of grad gives finite per-example gradients."""
    approx = LowRank(2, scale=0.5)
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(6, 5, generator=g, dtype=torch.float64)
    batch = {
        "lora_a": torch.randn(4, 2, 5, generator=g, dtype=torch.float64),
        "lora_b": torch.randn(4, 6, 2, generator=g, dtype=torch.float64),
    }
    got = torch.func.vmap(approx.weight, in_dims=(0, None))(batch, w0)
    want = torch.stack([w0 + 0.5 * batch["lora_b"][k] @ batch["lora_a"][k] for k in range(4)])
    torch.testing.assert_close(got, want, **EXACT)

    grads = torch.func.vmap(torch.func.grad(lambda p: approx.weight(p, w0).square().sum()))(batch)
    for k in range(4):
        one = {n: v[k] for n, v in batch.items()}
        ref = torch.func.grad(lambda p: approx.weight(p, w0).square().sum())(one)
        for n in batch:
            assert grads[n].isfinite().all()
            torch.testing.assert_close(grads[n][k], ref[n], **EXACT)
