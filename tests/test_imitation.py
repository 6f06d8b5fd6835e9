"""Tests for moil.objectives.imitation: the imitation loss, weight distances, data-aware form."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

import moil.approx as ma
from moil.objectives import (
    data_aware_imitation_loss,
    frobenius_distance,
    imitation_loss,
    output_error,
    second_moment,
    squared_frobenius_distance,
)

SETTINGS = settings(derandomize=True, max_examples=30, deadline=None)
F64 = dict(rtol=1e-10, atol=1e-12)

dims = st.integers(min_value=1, max_value=7)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _layers(seed: int, out_f: int, in_f: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "a.weight": _randn(g, out_f, in_f),
        "a.bias": _randn(g, out_f),
        "b.weight": _randn(g, in_f, out_f),
    }


# ----------------------------------------------------------------------------- imitation_loss


@SETTINGS
@given(seed=seeds, out_f=dims, in_f=dims, key=st.sampled_from(["a.weight", "a.bias", "b.weight"]))
def test_imitation_loss_nonnegative_and_zero_iff_equal(seed, out_f, in_f, key):
    """L(S, T) ≥ 0; L(T, T) = 0 exactly; changing any single entry of S makes L > 0."""
    target = _layers(seed, out_f, in_f)
    student = _layers(seed + 1, out_f, in_f)
    assert imitation_loss(student, target) >= 0
    assert imitation_loss(dict(target), target) == 0
    bumped = dict(target)
    flat = target[key].flatten().clone()
    flat[seed % flat.numel()] += 1e-3
    bumped[key] = flat.reshape(target[key].shape)
    assert imitation_loss(bumped, target) > 0


def test_imitation_loss_hand_computed():
    """Σ_keys mean((T − Ŵ)²): weight diff 1 everywhere (mean 1) + bias diff (1, 3) (mean 5) = 6."""
    student = {"l.weight": torch.zeros(2, 3), "l.bias": torch.zeros(2)}
    target = {"l.weight": torch.ones(2, 3), "l.bias": torch.tensor([1.0, 3.0])}
    loss = imitation_loss(student, target)
    assert loss.shape == ()
    assert_close(loss, torch.tensor(6.0), rtol=0, atol=1e-6)
    # The exact distance does not average: 6·1 + (1 + 9) = 16.
    assert_close(squared_frobenius_distance(student, target), torch.tensor(16.0), rtol=0, atol=1e-6)
    assert_close(frobenius_distance(student, target), torch.tensor(4.0), rtol=0, atol=1e-6)


@SETTINGS
@given(seed=seeds, out_f=dims, in_f=dims)
def test_distances_relate(seed, out_f, in_f):
    """frobenius = sqrt(squared); for one key, imitation_loss = squared_frobenius / numel."""
    target, student = _layers(seed, out_f, in_f), _layers(seed + 7, out_f, in_f)
    sq = squared_frobenius_distance(student, target)
    assert_close(frobenius_distance(student, target), sq.sqrt(), **F64)
    one_s, one_t = {"a.weight": student["a.weight"]}, {"a.weight": target["a.weight"]}
    assert_close(
        imitation_loss(one_s, one_t),
        squared_frobenius_distance(one_s, one_t) / (out_f * in_f),
        **F64,
    )


def test_mismatched_keys_raise_naming_them():
    """Missing and extra keys are both named; a shape mismatch names the key."""
    target = _layers(0, 3, 2)
    student = {k: v for k, v in target.items() if k != "a.bias"} | {"c.weight": torch.zeros(1)}
    for fn in (imitation_loss, squared_frobenius_distance, frobenius_distance):
        with pytest.raises(KeyError, match=r"missing from student: \['a.bias'\].*\['c.weight'\]"):
            fn(student, target)
    bad = dict(target, **{"b.weight": torch.zeros(5, 5, dtype=torch.float64)})
    with pytest.raises(ValueError, match=r"'b.weight'.*\(5, 5\)"):
        imitation_loss(bad, target)
    with pytest.raises(ValueError, match="empty"):
        imitation_loss({}, {})


def test_target_is_constant_and_inputs_untouched():
    """Gradients reach the student only; neither dict nor any tensor is modified."""
    target = {k: v.clone().requires_grad_() for k, v in _layers(0, 3, 4).items()}
    student = {k: v.clone().requires_grad_() for k, v in _layers(1, 3, 4).items()}
    before = {k: v.detach().clone() for k, v in student.items()}
    keys = list(student)
    imitation_loss(student, target).backward()
    assert all(t.grad is None for t in target.values())
    assert all(s.grad is not None for s in student.values())
    assert list(student) == keys and all(torch.equal(student[k], before[k]) for k in keys)


@SETTINGS
@given(
    seed=seeds,
    out_f=st.integers(2, 7),
    in_f=st.integers(2, 7),
    rank=st.integers(1, 2),
    scale=st.floats(-2.0, 2.0).filter(lambda s: abs(s) > 1e-3),
)
def test_grad_through_low_rank_is_analytic(seed, out_f, in_f, rank, scale):
    """Ŵ = W0 + sBA, D = T − Ŵ, n = out·in: ∂L/∂B = −(2s/n) D Aᵀ and ∂L/∂A = −(2s/n) Bᵀ D."""
    g = torch.Generator().manual_seed(seed)
    w0, t = _randn(g, out_f, in_f), _randn(g, out_f, in_f)
    params = {"lora_a": _randn(g, rank, in_f), "lora_b": _randn(g, out_f, rank)}
    approx = ma.LowRank(rank=rank, scale=scale)

    def loss(p):
        return imitation_loss({"l.weight": approx.weight(p, w0)}, {"l.weight": t})

    grads = torch.func.grad(loss)(params)
    a, b, n = params["lora_a"], params["lora_b"], out_f * in_f
    d = t - (w0 + scale * b @ a)
    assert_close(grads["lora_b"], -(2 * scale / n) * d @ a.T, **F64)
    assert_close(grads["lora_a"], -(2 * scale / n) * b.T @ d, **F64)


def test_frobenius_distance_grad_finite_at_zero():
    """At S = T the gradient of the (non-smooth) distance is the subgradient 0, not nan."""
    t = _layers(3, 2, 2)
    grads = torch.func.grad(lambda s: frobenius_distance(s, t))(dict(t))
    assert all(torch.equal(v, torch.zeros_like(v)) for v in grads.values())


def test_imitation_of_merged_adapter_with_shared_transform():
    """On Adapter.merge output (Hybrid, q/k/v sharing) the loss is Σ over 6 keys of their means."""
    g = torch.Generator().manual_seed(0)
    names = [f"blk.{n}" for n in ("query", "key", "value")]
    base = {
        f"{n}.{p}": _randn(g, 4, 4) if p == "weight" else _randn(g, 4)
        for n in names
        for p in ("weight", "bias")
    }
    target = {k: v + 0.1 * _randn(g, *v.shape) for k, v in base.items()}
    adapter = ma.Adapter(ma.Hybrid(rank=2), names, ma.Sharing(ma.TRANSFORM_KEYS))
    params = {k: v + 0.05 * _randn(g, *v.shape) for k, v in adapter.init(base, generator=g).items()}
    student = adapter.merge(params, base)
    expected = sum(((target[k] - student[k]) ** 2).mean() for k in target)
    assert_close(imitation_loss(student, target), expected, **F64)
    grads = torch.func.grad(lambda p: imitation_loss(adapter.merge(p, base), target))(params)
    assert set(grads) == set(params) and all(torch.isfinite(v).all() for v in grads.values())


# ----------------------------------------------------------------------------- data-aware form


@SETTINGS
@given(seed=seeds, batch=st.lists(st.integers(1, 5), min_size=1, max_size=2), in_f=dims)
def test_second_moment_is_mean_outer_product(seed, batch, in_f):
    """Σ = mean over samples of x xᵀ; augmented = moment of [x; 1] (blocks E[xxᵀ], E[x], 1)."""
    g = torch.Generator().manual_seed(seed)
    x = _randn(g, *batch, in_f)
    flat = x.reshape(-1, in_f)
    expected = torch.stack([torch.outer(v, v) for v in flat]).mean(0)
    assert_close(second_moment(x), expected, **F64)
    ones = torch.ones(flat.shape[0], 1, dtype=x.dtype)
    xa = torch.cat([flat, ones], 1)
    assert_close(
        second_moment(x, augmented=True),
        torch.stack([torch.outer(v, v) for v in xa]).mean(0),
        **F64,
    )


@SETTINGS
@given(seed=seeds, n=st.integers(1, 20), out_f=dims, in_f=dims)
def test_data_aware_loss_is_empirical_output_error(seed, n, out_f, in_f):
    """tr(DΣDᵀ) = mean_x ‖Dx‖², and with the augmented moment = mean_x ‖Dx + (t − b̂)‖²."""
    g = torch.Generator().manual_seed(seed)
    x = _randn(g, n, in_f)
    target, student = _layers(seed, out_f, in_f), _layers(seed + 1, out_f, in_f)
    d = target["a.weight"] - student["a.weight"]
    e = target["a.bias"] - student["a.bias"]
    plain = data_aware_imitation_loss(student, target, {"a.weight": second_moment(x)})
    assert_close(plain, ((x @ d.T) ** 2).sum(-1).mean(), **F64)
    aug = data_aware_imitation_loss(student, target, {"a.weight": second_moment(x, augmented=True)})
    assert_close(aug, ((x @ d.T + e) ** 2).sum(-1).mean(), **F64)
    # Bounded by the exact weight distance times the moment's operator norm.
    sigma = second_moment(x)
    one = ({"a.weight": student["a.weight"]}, {"a.weight": target["a.weight"]})
    assert (
        plain
        <= torch.linalg.matrix_norm(sigma, 2) * squared_frobenius_distance(*one) * (1 + 1e-9)
        + 1e-12
    )


def test_data_aware_loss_sums_layers_and_skips_bias_free_layers():
    """Σ over the moments' keys; an augmented moment on a layer without bias uses e = 0."""
    g = torch.Generator().manual_seed(5)
    target, student = _layers(0, 3, 2), _layers(1, 3, 2)
    xa, xb = _randn(g, 6, 2), _randn(g, 6, 3)
    moments = {"a.weight": second_moment(xa), "b.weight": second_moment(xb, augmented=True)}
    da, db = target["a.weight"] - student["a.weight"], target["b.weight"] - student["b.weight"]
    expected = ((xa @ da.T) ** 2).sum(-1).mean() + ((xb @ db.T) ** 2).sum(-1).mean()
    assert_close(data_aware_imitation_loss(student, target, moments), expected, **F64)


def test_data_aware_loss_errors():
    """Clear errors: moment of the wrong size, not square; key without a weight; one-sided bias."""
    target, student = _layers(0, 3, 2), _layers(1, 3, 2)
    with pytest.raises(ValueError, match=r"'a.weight'.*size 4.*in_features=2"):
        data_aware_imitation_loss(student, target, {"a.weight": torch.eye(4, dtype=torch.float64)})
    with pytest.raises(ValueError, match=r"'a.weight' must be square"):
        data_aware_imitation_loss(
            student, target, {"a.weight": torch.ones(2, 3, dtype=torch.float64)}
        )
    with pytest.raises(KeyError, match=r"'a'.*did you mean 'a.weight'"):
        data_aware_imitation_loss(student, target, {"a": torch.eye(2, dtype=torch.float64)})
    no_bias = {k: v for k, v in student.items() if k != "a.bias"}
    with pytest.raises(KeyError, match=r"'a.bias' is in only the target"):
        data_aware_imitation_loss(no_bias, target, {"a.weight": torch.eye(3, dtype=torch.float64)})
    with pytest.raises(ValueError, match="moments is empty"):
        data_aware_imitation_loss(student, target, {})
    with pytest.raises(ValueError, match="no sample"):
        second_moment(torch.zeros(0, 3))
    with pytest.raises(TypeError, match="floating-point"):
        second_moment(torch.zeros(2, 3, dtype=torch.long))


def test_output_error_is_row_norm():
    """output_error(Δ, x) = ‖Δx‖₂ per sample over leading axes; a bad width names the shapes."""
    delta = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    x = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])
    assert_close(output_error(delta, x), torch.tensor([[5.0, 3.0]]), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        output_error(delta, torch.ones(3))


@settings(derandomize=True, max_examples=40, deadline=None)
@given(
    seed=seeds, n=st.integers(1, 12), out_f=dims, in_f=dims, augmented=st.booleans(),
    weights=st.sampled_from([torch.float64, torch.float32, torch.bfloat16]),
    moment=st.sampled_from([torch.float64, torch.float32]),
)
def test_data_aware_loss_in_mixed_dtypes_is_the_output_error(seed, n, out_f, in_f, augmented, weights, moment):
    """Law: for weights (and biases) of any float dtype and a moment of another (float64, as
    ``input_moments`` returns it), plain or augmented, the loss is mean_x ‖D x (+ e)‖² on the
    rounded values, computed in the wider dtype (its result dtype)."""
    g = torch.Generator().manual_seed(seed)
    x = _randn(g, n, in_f)
    target, student = _layers(seed, out_f, in_f), _layers(seed + 1, out_f, in_f)
    target, student = ({k: v.to(weights) for k, v in d.items()} for d in (target, student))
    sigma = second_moment(x, augmented=augmented).to(moment)
    got = data_aware_imitation_loss(student, target, {"a.weight": sigma})
    assert got.dtype == torch.promote_types(weights, moment)
    d = (target["a.weight"] - student["a.weight"]).double()
    if augmented:  # [D, e] against the augmented moment of [x; 1]
        d = torch.cat([d, (target["a.bias"] - student["a.bias"]).double()[:, None]], 1)
    want = ((d @ sigma.double()) * d).sum()  # = mean_x ‖D x (+ e)‖² for the moment as rounded
    if moment == torch.float64:
        assert_close(want, ((x @ d[:, :in_f].T + (d[:, in_f] if augmented else 0)) ** 2).sum(-1).mean(), **F64)
    # D is formed in the weights' dtype (here too), then widened: only the wide dtype rounds.
    tol = 1e-10 if got.dtype == torch.float64 else 1e-5
    assert_close(got.double(), want, rtol=tol, atol=tol)
