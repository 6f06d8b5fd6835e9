"""Tests for moil.approx.Transform / OutputTransform: the linear adapter x ↦ x + U(D x + a) + c
merged into W0, before the layer or after it."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moil.approx import TRANSFORM_KEYS, OutputTransform, Transform
from moil.testing import adapter_params, check_approximation, weight_shapes, weights

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None)
EXACT = {"rtol": 1e-12, "atol": 1e-12}  # float64, sizes ≤ 12: far above rounding
SIDES = ("input", "output")
TRANSFORMS = {"input": Transform, "output": OutputTransform}  # the class of each side


def adapter(p, h):
    """The adapter on a batch h (batch, d): h + (h Dᵀ + a) Uᵀ + c, i.e. h + U(D h + a) + c."""
    down, a = p["transform_down"], p["transform_down_bias"]
    up, c = p["transform_up"], p["transform_up_bias"]
    return h + (h @ down.T + a) @ up.T + c


def linear(x, w0, b0):
    return x @ w0.T if b0 is None else x @ w0.T + b0


def sequential_input(p, w0, b0, x):
    """Input side, sequentially: x' = x + U(D x + a) + c, then y = W0 x' + b0."""
    return linear(adapter(p, x), w0, b0)


def sequential_output(p, w0, b0, x):
    """Output side, sequentially: y = W0 x + b0, then y' = y + U(D y + a) + c."""
    return adapter(p, linear(x, w0, b0))


SEQUENTIAL = {"input": sequential_input, "output": sequential_output}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("rank", [1, 3])
def test_contract_laws_with_sequential_reference(side, rank):
    """Every contract law holds, and x Ŵᵀ + b̂ equals the adapter and the layer applied in turn."""
    check_approximation(TRANSFORMS[side](rank), reference=SEQUENTIAL[side], max_examples=20)


def explicit(side, p, w0, b0):
    """Ŵ, b̂ with explicit identity matrices: W0 (I + U D), W0 (U a + c) + b0 (input) or
    (I + U D) W0, (I + U D) b0 + U a + c (output); b0 = None is read as b0 = 0."""
    down, a = p["transform_down"], p["transform_down_bias"]
    up, c = p["transform_up"], p["transform_up_bias"]
    eye = torch.eye(up.shape[0], dtype=w0.dtype)
    b0 = torch.zeros(w0.shape[0], dtype=w0.dtype) if b0 is None else b0
    if side == "input":
        return w0 @ (eye + up @ down), w0 @ (up @ a + c) + b0
    return (eye + up @ down) @ w0, (eye + up @ down) @ b0 + up @ a + c


@SETTINGS
@given(data=st.data(), side=st.sampled_from(SIDES), rank=st.integers(1, 3), with_bias=st.booleans())
def test_formula_equals_explicit_identity_matrices(data, side, rank, with_bias):
    """Input: Ŵ = W0 (I + U D), b̂ = W0 (U a + c) + b0; output: Ŵ = (I + U D) W0,
    b̂ = (I + U D) b0 + U a + c — with and without b0 (absent b0 acts as 0)."""
    approx = TRANSFORMS[side](rank)
    w0 = data.draw(weights(weight_shapes(rank, 9)))
    b0 = data.draw(weights((w0.shape[0],))) if with_bias else None
    p = data.draw(adapter_params(approx, w0, b0))
    want_w, want_b = explicit(side, p, w0, b0)
    torch.testing.assert_close(approx.weight(p, w0), want_w, **EXACT)
    torch.testing.assert_close(approx.bias(p, w0, b0), want_b, **EXACT)


@SETTINGS
@given(data=st.data(), side=st.sampled_from(SIDES), rank=st.integers(1, 3), batch=st.integers(1, 4))
def test_merge_equals_sequential_adapter(data, side, rank, batch):
    """Merging is exact: x Ŵᵀ + b̂ = W0 (x + U(D x + a) + c) + b0 (input side) and
    = y + U(D y + a) + c with y = W0 x + b0 (output side)."""
    approx = TRANSFORMS[side](rank)
    w0 = data.draw(weights(weight_shapes(rank, 9)))
    b0 = data.draw(st.none() | weights((w0.shape[0],)))
    p = data.draw(adapter_params(approx, w0, b0))
    x = data.draw(weights((batch, w0.shape[1])))
    merged = x @ approx.weight(p, w0).T + approx.bias(p, w0, b0)
    torch.testing.assert_close(merged, SEQUENTIAL[side](p, w0, b0, x), **EXACT)


def test_hand_checkable_merge():
    """W0 = [[1, 2], [3, 4]], U = [[1], [0]], D = [[0, 1]], a = [1], c = [0, 2], b0 = [1, 1]:
    input  Ŵ = W0 [[1, 1], [0, 1]] = [[1, 3], [3, 7]], b̂ = W0 [1, 2] + b0 = [6, 12];
    output Ŵ = [[1, 1], [0, 1]] W0 = [[4, 6], [3, 4]], b̂ = [[1, 1], [0, 1]] b0 + [1, 2] = [3, 3].
    """
    f64 = {"dtype": torch.float64}
    w0, b0 = torch.tensor([[1.0, 2.0], [3.0, 4.0]], **f64), torch.tensor([1.0, 1.0], **f64)
    p = {
        "transform_down": torch.tensor([[0.0, 1.0]], **f64),
        "transform_down_bias": torch.tensor([1.0], **f64),
        "transform_up": torch.tensor([[1.0], [0.0]], **f64),
        "transform_up_bias": torch.tensor([0.0, 2.0], **f64),
    }
    inp, out = Transform(1), OutputTransform(1)
    exact = {"rtol": 0, "atol": 0}
    torch.testing.assert_close(
        inp.weight(p, w0), torch.tensor([[1.0, 3.0], [3.0, 7.0]], **f64), **exact
    )
    torch.testing.assert_close(inp.bias(p, w0, b0), torch.tensor([6.0, 12.0], **f64), **exact)
    torch.testing.assert_close(
        out.weight(p, w0), torch.tensor([[4.0, 6.0], [3.0, 4.0]], **f64), **exact
    )
    torch.testing.assert_close(out.bias(p, w0, b0), torch.tensor([3.0, 3.0], **f64), **exact)


@SETTINGS
@given(
    shape=weight_shapes(3, 12),
    side=st.sampled_from(SIDES),
    rank=st.integers(1, 3),
    seed=st.integers(0, 2**31),
)
def test_init_is_xavier_down_and_zero_rest(shape, side, rank, seed):
    """D ~ U(±√(6/(r + d))) of shape (r, d), with d = in (input) or out (output); a, U, c = 0."""
    d = shape[1] if side == "input" else shape[0]
    p = TRANSFORMS[side](rank).init(
        torch.zeros(shape, dtype=torch.float64), generator=torch.Generator().manual_seed(seed)
    )
    assert list(p) == list(TRANSFORM_KEYS)
    assert p["transform_down"].shape == (rank, d)
    assert p["transform_down"].abs().max() <= math.sqrt(6 / (rank + d))
    assert [tuple(p[k].shape) for k in TRANSFORM_KEYS[1:]] == [(rank,), (d, rank), (d,)]
    assert all(not p[k].count_nonzero() for k in TRANSFORM_KEYS[1:])


@pytest.mark.parametrize(
    "side,shape,want", [("input", (6, 5), 2 * 2 * 5 + 2 + 5), ("output", (6, 5), 2 * 2 * 6 + 2 + 6)]
)
def test_num_params_is_two_r_d_plus_r_plus_d(side, shape, want):
    """num_params = 2·r·d + r + d with d the adapted side's width (r = 2)."""
    assert TRANSFORMS[side](2).num_params(*shape) == want


def test_shareable_only_on_the_input_side():
    """The input-side adapter depends on the input alone (all four keys shareable); the output side
    on nothing shareable."""
    assert Transform(2).shareable == frozenset(TRANSFORM_KEYS)
    assert OutputTransform(2).shareable == frozenset()


@SETTINGS
@given(w0=weights((4, 5)), seed=st.integers(0, 2**31))
def test_input_side_grad_matches_closed_form(w0, seed):
    """For f = Σ G ⊙ (W0 + W0 U D): ∂f/∂U = W0ᵀ G Dᵀ and ∂f/∂D = Uᵀ W0ᵀ G (torch.func.grad)."""
    approx = Transform(2)
    g = torch.Generator().manual_seed(seed)
    p = {
        k: torch.randn(v.shape, generator=g, dtype=torch.float64)
        for k, v in approx.init(w0).items()
    }
    cot = torch.randn(4, 5, generator=g, dtype=torch.float64)
    grads = torch.func.grad(lambda q: (approx.weight(q, w0) * cot).sum())(p)
    torch.testing.assert_close(grads["transform_up"], w0.T @ cot @ p["transform_down"].T, **EXACT)
    torch.testing.assert_close(grads["transform_down"], p["transform_up"].T @ w0.T @ cot, **EXACT)
