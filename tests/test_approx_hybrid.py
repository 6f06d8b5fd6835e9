"""Tests for moil.approx.Hybrid: Ŵ = (W0 + s B A)(I + U D) (input), and OutputHybrid:
(I + U D)(W0 + s B A) (output)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moil.approx import TRANSFORM_KEYS, Hybrid, LowRank, OutputHybrid, OutputTransform, Transform
from moil.testing import adapter_params, check_approximation, weight_shapes, weights

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None)
EXACT = {"rtol": 1e-12, "atol": 1e-12}  # float64, sizes ≤ 12: far above rounding
SIDES = ("input", "output")
HYBRIDS = {"input": Hybrid, "output": OutputHybrid}  # the class of each side
TRANSFORMS = {"input": Transform, "output": OutputTransform}


def side_of(approx):
    return "output" if isinstance(approx, OutputHybrid) else "input"


def adapter(p, h):
    """h + U(D h + a) + c on a batch h (batch, d)."""
    down, a = p["transform_down"], p["transform_down_bias"]
    up, c = p["transform_up"], p["transform_up_bias"]
    return h + (h @ down.T + a) @ up.T + c


def low_rank_layer(p, w0, b0, x, scale):
    """(W0 + s B A) x + b0, factored: x W0ᵀ + s (x Aᵀ) Bᵀ + b0."""
    y = x @ w0.T + scale * ((x @ p["lora_a"].T) @ p["lora_b"].T)
    return y if b0 is None else y + b0


def sequential(approx):
    """The reference forward of ``approx`` with the adapter applied as its own step."""

    def forward(p, w0, b0, x):
        if side_of(approx) == "input":  # x' = x + U(D x + a) + c, y = L x' + b0
            return low_rank_layer(p, w0, b0, adapter(p, x), approx.scale)
        return adapter(
            p, low_rank_layer(p, w0, b0, x, approx.scale)
        )  # y = L x + b0, y' = adapter(y)

    return forward


CASES = [
    Hybrid(2),
    Hybrid(1, transform_rank=3),
    Hybrid(3, transform_rank=1, scale=0.5),
    OutputHybrid(2),
    OutputHybrid(1, transform_rank=2, scale=-1.0),
]


@pytest.mark.parametrize("approx", CASES, ids=repr)
def test_contract_laws_with_sequential_reference(approx):
    """Every contract law holds, and x Ŵᵀ + b̂ equals the adapter and the low-rank layer applied in
    turn."""
    check_approximation(approx, reference=sequential(approx), max_examples=20)


def explicit(approx, p, w0, b0):
    """With L = W0 + s B A and explicit identities: input Ŵ = L (I + U D), b̂ = L (U a + c) + b0;
    output Ŵ = (I + U D) L, b̂ = (I + U D) b0 + U a + c; absent b0 acts as 0."""
    down, a = p["transform_down"], p["transform_down_bias"]
    up, c = p["transform_up"], p["transform_up_bias"]
    low = w0 + approx.scale * p["lora_b"] @ p["lora_a"]
    eye = torch.eye(up.shape[0], dtype=w0.dtype)
    b0 = torch.zeros(w0.shape[0], dtype=w0.dtype) if b0 is None else b0
    if side_of(approx) == "input":
        return low @ (eye + up @ down), low @ (up @ a + c) + b0
    return (eye + up @ down) @ low, (eye + up @ down) @ b0 + up @ a + c


hybrids = st.sampled_from(SIDES).flatmap(
    lambda side: st.builds(
        HYBRIDS[side],
        rank=st.integers(1, 3),
        transform_rank=st.none() | st.integers(1, 3),
        scale=st.sampled_from([1.0, 0.5, -2.0]),
    )
)


@SETTINGS
@given(data=st.data(), approx=hybrids, with_bias=st.booleans())
def test_formula_equals_explicit_identity_matrices(data, approx, with_bias):
    """Ŵ = (W0 + sBA)(I + UD), b̂ = (W0 + sBA)(Ua + c) + b0 (input); Ŵ = (I + UD)(W0 + sBA),
    b̂ = (I + UD) b0 + Ua + c (output) — with and without b0."""
    w0 = data.draw(weights(weight_shapes(3, 9)))
    b0 = data.draw(weights((w0.shape[0],))) if with_bias else None
    p = data.draw(adapter_params(approx, w0, b0))
    want_w, want_b = explicit(approx, p, w0, b0)
    torch.testing.assert_close(approx.weight(p, w0), want_w, **EXACT)
    torch.testing.assert_close(approx.bias(p, w0, b0), want_b, **EXACT)
    w, b = approx.weight_and_bias(p, w0, b0)
    torch.testing.assert_close(w, want_w, **EXACT)
    torch.testing.assert_close(b, want_b, **EXACT)


@SETTINGS
@given(data=st.data(), approx=hybrids, batch=st.integers(1, 4))
def test_merge_equals_sequential_adapter(data, approx, batch):
    """Merging is exact: input x ↦ x' = x + U(D x + a) + c ↦ (W0 + sBA) x' + b0, and output
    y = (W0 + sBA) x + b0 ↦ y + U(D y + a) + c, both equal x Ŵᵀ + b̂."""
    w0 = data.draw(weights(weight_shapes(3, 9)))
    b0 = data.draw(st.none() | weights((w0.shape[0],)))
    p = data.draw(adapter_params(approx, w0, b0))
    x = data.draw(weights((batch, w0.shape[1])))
    merged = x @ approx.weight(p, w0).T + approx.bias(p, w0, b0)
    torch.testing.assert_close(merged, sequential(approx)(p, w0, b0, x), **EXACT)


@SETTINGS
@given(data=st.data(), approx=hybrids)
def test_zero_transform_equals_low_rank(data, approx):
    """With U = 0, a = 0, c = 0 (any D): Hybrid's Ŵ = W0 + sBA and b̂ = b0 — LowRank on the same
    lora params (b̂ = 0 where LowRank gives None for an absent b0)."""
    w0 = data.draw(weights(weight_shapes(3, 9)))
    b0 = data.draw(st.none() | weights((w0.shape[0],)))
    p = dict(data.draw(adapter_params(approx, w0, b0)))
    for k in ("transform_up", "transform_down_bias", "transform_up_bias"):
        p[k] = torch.zeros_like(p[k])
    assert p["transform_down"].count_nonzero()
    low = LowRank(approx.rank, scale=approx.scale)
    lora = {k: p[k] for k in ("lora_a", "lora_b")}
    torch.testing.assert_close(approx.weight(p, w0), low.weight(lora, w0), rtol=0, atol=0)
    want_b = low.bias(lora, w0, b0)
    want_b = torch.zeros(w0.shape[0], dtype=w0.dtype) if want_b is None else want_b
    torch.testing.assert_close(approx.bias(p, w0, b0), want_b, rtol=0, atol=0)


def test_hand_checkable_merge():
    """W0 = I₂, B = [[1], [0]], A = [[0, 1]], s = 1 ⇒ L = [[1, 1], [0, 1]];
    U = [[0], [1]], D = [[1, 0]] ⇒ I + UD = [[1, 0], [1, 1]]:
    input Ŵ = L(I + UD) = [[2, 1], [1, 1]], output Ŵ = (I + UD)L = [[1, 1], [1, 2]]."""
    f64 = {"dtype": torch.float64}
    w0 = torch.eye(2, **f64)
    p = {
        "lora_a": torch.tensor([[0.0, 1.0]], **f64),
        "lora_b": torch.tensor([[1.0], [0.0]], **f64),
        "transform_down": torch.tensor([[1.0, 0.0]], **f64),
        "transform_down_bias": torch.zeros(1, **f64),
        "transform_up": torch.tensor([[0.0], [1.0]], **f64),
        "transform_up_bias": torch.zeros(2, **f64),
    }
    exact = {"rtol": 0, "atol": 0}
    torch.testing.assert_close(
        Hybrid(1).weight(p, w0), torch.tensor([[2.0, 1.0], [1.0, 1.0]], **f64), **exact
    )
    torch.testing.assert_close(
        OutputHybrid(1).weight(p, w0),
        torch.tensor([[1.0, 1.0], [1.0, 2.0]], **f64),
        **exact,
    )


@pytest.mark.parametrize("approx", CASES, ids=repr)
def test_parameters_are_the_union_of_both_parts(approx):
    """shapes = LowRank(r).shapes ∪ Transform(r_t or r).shapes, num_params their sum, r_t = None
    means r."""
    low = LowRank(approx.rank, scale=approx.scale)
    tr = TRANSFORMS[side_of(approx)](approx.transform_rank or approx.rank)
    assert approx.shapes(7, 6) == {**low.shapes(7, 6), **tr.shapes(7, 6)}
    assert approx.num_params(7, 6) == low.num_params(7, 6) + tr.num_params(7, 6)
    assert approx.shareable == low.shareable | tr.shareable
    assert set(TRANSFORM_KEYS) <= set(approx.shapes(7, 6))


def test_init_draws_low_rank_first():
    """init(w0, generator=g) = LowRank.init(w0, g) ∪ Transform.init(w0, g), drawn in that order."""
    w0 = torch.zeros(6, 5, dtype=torch.float64)
    got = Hybrid(2, transform_rank=3).init(w0, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    want = {**LowRank(2).init(w0, generator=g), **Transform(3).init(w0, generator=g)}
    assert list(got) == list(want)
    for k, value in want.items():
        assert torch.equal(got[k], value), k
