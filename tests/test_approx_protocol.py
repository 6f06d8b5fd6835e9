"""Tests for moil.approx.protocol: the contract and input checks every built-in approximation
shares."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import moil.approx as ma
from moil.approx import Approximation, Hybrid, LowRank, OutputHybrid, OutputTransform, Transform, on_side

BUILT_INS = [
    LowRank(2),
    LowRank(2, scale=0.5),
    Transform(2),
    OutputTransform(2),
    Hybrid(2),
    OutputHybrid(2, transform_rank=1),
]
ids = [repr(a) for a in BUILT_INS]


def random_params(approx, w0, seed=0):
    """Non-trivial params: init's keys and shapes, N(0, 0.25) entries in w0's dtype."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: (0.5 * torch.randn(v.shape, generator=g, dtype=torch.float64)).to(w0)
        for k, v in approx.init(w0).items()
    }


def layer(seed=0, shape=(5, 4), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    return w0, torch.randn(shape[0], generator=g, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("approx", BUILT_INS, ids=ids)
def test_built_ins_follow_the_protocol(approx):
    """Each built-in is an Approximation (init, weight, bias, num_params, shareable)."""
    assert isinstance(approx, Approximation)


# ------------------------------------------------------------------ construction errors


@pytest.mark.parametrize("cls", [LowRank, Transform, OutputTransform, Hybrid, OutputHybrid])
@pytest.mark.parametrize("bad", [0, -1, 2.5, "2", True, None])
def test_rank_must_be_a_positive_int(cls, bad):
    """rank ∈ ℤ, rank ≥ 1 (bool, float, str, None rejected); the message shows rank=<value>."""
    with pytest.raises(ValueError, match=re.escape(f"rank={bad!r}")):
        cls(bad)


@pytest.mark.parametrize("cls", [Hybrid, OutputHybrid])
@pytest.mark.parametrize("bad", [0, -3, 1.5])
def test_hybrid_transform_rank_must_be_a_positive_int_or_none(cls, bad):
    """transform_rank ∈ {None} ∪ ℤ≥1; the message shows transform_rank=<value>."""
    with pytest.raises(ValueError, match=re.escape(f"transform_rank={bad!r}")):
        cls(2, transform_rank=bad)


@pytest.mark.parametrize("cls", [LowRank, Hybrid, OutputHybrid])
@pytest.mark.parametrize("bad", [float("inf"), float("nan"), "1", None])
def test_scale_must_be_finite(cls, bad):
    """scale ∈ ℝ finite; the message shows scale=<value>."""
    with pytest.raises(ValueError, match=re.escape(f"scale={bad!r}")):
        cls(2, scale=bad)


@pytest.mark.parametrize("cls", [Transform, Hybrid])
def test_side_must_be_input_or_output(cls):
    """side ∈ {"input", "output"} picks the variant class; the message shows the bad side."""
    with pytest.raises(ValueError, match="left"):
        on_side(cls, "left")
    assert on_side(cls, "input") is cls
    assert on_side(cls, "output") is {Transform: OutputTransform, Hybrid: OutputHybrid}[cls]


# ---------------------------------------------------------------------- runtime errors


@pytest.mark.parametrize(
    "approx,name,value",
    [
        (LowRank(5), "rank", 5),
        (OutputTransform(5), "rank", 5),
        (Hybrid(5), "rank", 5),
        (Hybrid(2, transform_rank=5), "transform_rank", 5),
    ],
    ids=repr,
)
def test_rank_above_min_features_fails_at_init(approx, name, value):
    """A rank r > min(out, in) = 4 cannot be realised; the message names the field, its value and
    the limit."""
    with pytest.raises(
        ValueError,
        match=re.escape(f"{name}={value} is larger than min(out_features, in_features)=4"),
    ):
        approx.init(torch.zeros(6, 4))


@pytest.mark.parametrize("approx", BUILT_INS, ids=ids)
def test_missing_param_names_the_key(approx):
    """A params dict without a required key raises KeyError naming that key."""
    w0, _ = layer()
    params = random_params(approx, w0)
    key = next(iter(params))
    del params[key]
    with pytest.raises(KeyError, match=re.escape(repr(key))):
        approx.weight(params, w0)


@pytest.mark.parametrize("approx", BUILT_INS, ids=ids)
def test_wrong_param_shape_names_key_and_shapes(approx):
    """A param of the wrong shape (made for another layer) raises ValueError naming key, got and
    expected shapes."""
    w0, _ = layer()
    params = random_params(approx, w0)
    other = random_params(approx, torch.zeros(6, 7, dtype=torch.float64))
    key = next(k for k in params if params[k].shape != other[k].shape)
    params[key] = other[key]
    with pytest.raises(ValueError, match=re.escape(f"{key!r} has shape {tuple(other[key].shape)}")):
        approx.weight(params, w0)


@pytest.mark.parametrize("approx", BUILT_INS, ids=ids)
def test_param_dtype_mismatch_names_key_and_dtypes(approx):
    """A float32 param with a float64 w0 raises TypeError naming the key and both dtypes."""
    w0, b0 = layer()
    params = random_params(approx, w0)
    key = next(iter(params))
    params[key] = params[key].float()
    with pytest.raises(
        TypeError, match=re.escape(f"{key!r} is torch.float32 on cpu but w0 is torch.float64")
    ):
        approx.weight(params, w0)
    if not isinstance(approx, LowRank):  # LowRank's bias is b0: it reads no params
        with pytest.raises(TypeError, match=re.escape(repr(key))):
            approx.bias(params, w0, b0)


@pytest.mark.parametrize("approx", BUILT_INS, ids=ids)
def test_param_device_mismatch_names_key_and_device(approx):
    """A param on another device (here 'meta', so the test runs without a GPU) raises TypeError
    naming it."""
    w0, _ = layer()
    params = random_params(approx, w0)
    key = next(iter(params))
    params[key] = params[key].to("meta")
    with pytest.raises(TypeError, match=re.escape(f"{key!r} is torch.float64 on meta but w0")):
        approx.weight(params, w0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("approx", BUILT_INS, ids=ids)
def test_cuda_params_with_cpu_w0_name_the_device(approx):
    """Params on cuda with w0 on the CPU raise TypeError naming the key and 'cuda'."""
    w0, _ = layer()
    params = {k: v.cuda() for k, v in random_params(approx, w0).items()}
    with pytest.raises(
        TypeError, match=re.escape(f"{next(iter(params))!r} is torch.float64 on cuda")
    ):
        approx.weight(params, w0)


@pytest.mark.parametrize("approx", BUILT_INS, ids=ids)
def test_bias_of_wrong_shape_or_dtype(approx):
    """b0 must be (out,) = (5,) and share w0's dtype; the messages show the bad shape / dtype."""
    w0, b0 = layer()
    params = random_params(approx, w0)
    with pytest.raises(ValueError, match=re.escape("got (4,)")):
        approx.bias(params, w0, b0[:4])
    with pytest.raises(ValueError, match=re.escape("got (4,)")):
        approx.init(w0, b0[:4])
    with pytest.raises(TypeError, match="torch.float32"):
        approx.bias(params, w0, b0.float())


@pytest.mark.parametrize("approx", BUILT_INS, ids=ids)
def test_w0_must_be_a_floating_matrix(approx):
    """w0 must be 2-D (message shows the shape) and floating point (message shows the dtype)."""
    with pytest.raises(ValueError, match=re.escape("(2, 3, 4)")):
        approx.init(torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match="torch.int64"):
        approx.init(torch.zeros(4, 4, dtype=torch.int64))


# -------------------------------------------------------------------- dtypes and torch.func


@pytest.mark.parametrize("approx", BUILT_INS, ids=ids)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_low_precision_weights_keep_their_dtype(approx, dtype, tol):
    """For w0, b0 in float32 / bfloat16: Ŵ, b̂ are in that dtype, identity at init is exact, and
    random-param results are close (rtol = atol = tol) to the float64 computation."""
    w64, b64 = layer()
    w0, b0 = w64.to(dtype), b64.to(dtype)
    init = approx.init(w0, b0)
    assert torch.equal(approx.weight(init, w0), w0) and torch.equal(approx.bias(init, w0, b0), b0)
    params = random_params(approx, w0)
    w, b = approx.weight(params, w0), approx.bias(params, w0, b0)
    assert w.dtype == dtype and b.dtype == dtype
    p64 = {k: v.double() for k, v in params.items()}
    w_ref, b_ref = approx.weight(p64, w0.double()), approx.bias(p64, w0.double(), b0.double())
    torch.testing.assert_close(
        w.double(), w_ref, rtol=tol, atol=tol * (1 + w_ref.abs().max().item())
    )
    torch.testing.assert_close(
        b.double(), b_ref, rtol=tol, atol=tol * (1 + b_ref.abs().max().item())
    )


@pytest.mark.parametrize("approx", BUILT_INS, ids=ids)
def test_grad_is_finite_and_matches_finite_differences(approx):
    """∂/∂params of Σ G⊙Ŵ + Σ g⊙b̂ from torch.func.grad is finite and passes gradcheck (float64)."""
    w0, b0 = layer(shape=(4, 3))
    params = random_params(approx, w0, seed=1)
    g = torch.Generator().manual_seed(2)
    gw, gb = (
        torch.randn(4, 3, generator=g, dtype=torch.float64),
        torch.randn(4, generator=g, dtype=torch.float64),
    )
    keys = list(params)

    def scalar(*values):
        p = dict(zip(keys, values))
        return (approx.weight(p, w0) * gw).sum() + (approx.bias(p, w0, b0) * gb).sum()

    grads = torch.func.grad(lambda p: scalar(*p.values()))(params)
    assert all(grads[k].isfinite().all() for k in keys)
    inputs = tuple(v.clone().requires_grad_(True) for v in params.values())
    assert torch.autograd.gradcheck(scalar, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)
    auto = torch.autograd.grad(scalar(*inputs), inputs)
    for k, a in zip(keys, auto):
        torch.testing.assert_close(grads[k], a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("approx", BUILT_INS, ids=ids)
def test_vmap_over_params_equals_a_loop(approx):
    """vmap over a batch of K params gives [Ŵ(p_k)]_k and [b̂(p_k)]_k, exactly as a Python loop."""
    w0, b0 = layer()
    batch = [random_params(approx, w0, seed=s) for s in range(3)]
    stacked = {k: torch.stack([p[k] for p in batch]) for k in batch[0]}
    w = torch.func.vmap(approx.weight, in_dims=(0, None))(stacked, w0)
    b = torch.func.vmap(approx.bias, in_dims=(0, None, None))(stacked, w0, b0)
    assert w.isfinite().all() and b.isfinite().all()
    for k, p in enumerate(batch):
        torch.testing.assert_close(w[k], approx.weight(p, w0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(b[k], approx.bias(p, w0, b0), rtol=1e-12, atol=1e-12)


# ------------------------------------------- the laws on awkward shapes, dtypes and layouts

CLASSES = (LowRank, Transform, OutputTransform, Hybrid, OutputHybrid)
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 4e-2}


@st.composite
def awkward_layers(draw):
    """An approximation on a ``(out, in)`` layer with ``out ≠ in`` either way, ``1 × n`` and
    ``n × 1``, ranks from 1 to ``min(out, in)`` (``transform_rank`` drawn apart from
    ``rank``), float64/float32/bfloat16, with or without bias, ``w0`` zero or scaled by
    1e-3…1e3 and stored transposed (non-contiguous) or not."""
    out, inp = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    cls = draw(st.sampled_from(CLASSES))
    limit = min(out, inp)
    rank = draw(st.integers(1, limit))
    if cls in (Hybrid, OutputHybrid):
        approx = cls(rank, transform_rank=draw(st.none() | st.integers(1, limit)),
                     scale=draw(st.sampled_from([1.0, 0.5, -2.0])))
    elif cls is LowRank:
        approx = cls(rank, scale=draw(st.sampled_from([1.0, 0.25, -3.0])))
    else:
        approx = cls(rank)
    dtype = draw(st.sampled_from(list(TOL)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    scale = draw(st.sampled_from([0.0, 1e-3, 1.0, 1e3]))
    w0 = torch.randn(inp, out, generator=g, dtype=torch.float64).T * scale  # (out, in), non-contiguous
    if not draw(st.booleans()):
        w0 = w0.contiguous()
    b0 = torch.randn(out, generator=g, dtype=torch.float64) * scale if draw(st.booleans()) else None
    params = {k: (0.4 * torch.randn(v.shape, generator=g, dtype=torch.float64)).to(dtype)
              for k, v in approx.init(w0.to(dtype)).items()}
    x = torch.randn(3, inp, generator=g, dtype=torch.float64).to(dtype)
    return approx, w0.to(dtype), None if b0 is None else b0.to(dtype), params, x


def sequential(approx, p, w0, b0, x):
    """The adapted layer computed step by step in float64, never forming ``Ŵ``:
    ``x' = x + U(D x + a) + c`` then ``(W0 + s·B A) x' + b0`` (input side), or
    ``y = (W0 + s·B A) x + b0`` then ``y + U(D y + a) + c`` (output side)."""
    p = {k: v.double() for k, v in p.items()}
    w0, x = w0.double(), x.double()
    b0 = torch.zeros(w0.shape[0], dtype=torch.float64) if b0 is None else b0.double()

    def layer(v):
        y = v @ w0.T + b0
        if "lora_a" in p:
            y = y + approx.scale * (v @ p["lora_a"].T) @ p["lora_b"].T
        return y

    def adapter(v):
        return v + (v @ p["transform_down"].T + p["transform_down_bias"]) @ p["transform_up"].T + p["transform_up_bias"]

    if isinstance(approx, LowRank):
        return layer(x)
    return layer(adapter(x)) if isinstance(approx, (Transform, Hybrid)) else adapter(layer(x))


def stored_size(approx, out, inp):
    """The table's formula: ``r(in + out)`` (LowRank), ``2 r d + r + d`` (transform,
    ``d = in`` input side, ``out`` output side), their sum (hybrids)."""
    low = approx.rank * (inp + out) if isinstance(approx, (LowRank, Hybrid, OutputHybrid)) else 0
    if isinstance(approx, LowRank):
        return low
    r_t = approx.rank if isinstance(approx, (Transform, OutputTransform)) else approx.transform_rank or approx.rank
    d = inp if isinstance(approx, (Transform, Hybrid)) else out
    return low + 2 * r_t * d + r_t + d


@settings(derandomize=True, max_examples=150, deadline=None)
@given(case=awkward_layers())
def test_merged_weight_is_the_adapted_forward_on_awkward_layers(case):
    """Laws, on every case of :func:`awkward_layers`: (1) the merged weight is the adapted
    forward, ``x Ŵᵀ + b̂ = sequential(x)`` (tolerance of the dtype); (2) ``Ŵ``/``b̂`` keep
    ``w0``'s shape and dtype; (3) merge ∘ init is the identity, exactly (``Ŵ = W0``,
    ``b̂ = b0``, zeros for a new bias): un-merging needs no stored copy; (4) ``num_params``
    = the size of ``init``'s tensors = the stored-size formula; (5) ``weight_and_bias`` =
    ``(weight, bias)`` exactly; (6) the adapter ``Adapter.merge`` leaves ``base`` as it was."""
    approx, w0, b0, params, x = case
    out, inp = w0.shape
    w, b = approx.weight_and_bias(params, w0, b0)
    assert w.shape == (out, inp) and w.dtype == w0.dtype
    assert (b is None) == (b0 is None and isinstance(approx, LowRank))
    got = (x @ w.T + (0 if b is None else b)).double()
    want = sequential(approx, params, w0, b0, x)
    tol = TOL[w0.dtype] * (1 + want.abs().max())
    torch.testing.assert_close(got, want, rtol=0, atol=float(tol))
    assert torch.equal(w, approx.weight(params, w0))
    assert (b is None and approx.bias(params, w0, b0) is None) or torch.equal(b, approx.bias(params, w0, b0))
    fresh = approx.init(w0, b0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(approx.weight(fresh, w0), w0)
    b_init = approx.bias(fresh, w0, b0)
    assert (b0 is None and (b_init is None or not b_init.any())) or torch.equal(b_init, b0)
    size = sum(v.numel() for v in fresh.values())
    assert approx.num_params(out, inp) == size == stored_size(approx, out, inp)
    base = {"l.weight": w0} | ({} if b0 is None else {"l.bias": b0})
    before = {k: v.clone() for k, v in base.items()}
    merged = ma.Adapter(approx, ["l"]).merge({f"l::{k}": v for k, v in params.items()}, base)
    assert torch.equal(merged["l.weight"], w)
    assert all(torch.equal(base[k], before[k]) for k in before)


@settings(derandomize=True, max_examples=40, deadline=None)
@given(cls=st.sampled_from(CLASSES), out=st.integers(1, 6), inp=st.integers(1, 6), extra=st.integers(1, 3),
       which=st.sampled_from(["rank", "transform_rank"]))
def test_rank_above_min_dim_is_refused_naming_the_field(cls, out, inp, extra, which):
    """Law: a rank (or ``transform_rank``) above ``min(out, in)`` is refused by ``shapes``,
    ``init`` and ``num_params`` alike with a ValueError naming the field, its value and
    the limit; the same approximation at the limit is accepted."""
    limit = min(out, inp)
    hybrid = cls in (Hybrid, OutputHybrid)
    which = which if hybrid else "rank"
    bad = cls(**{"rank": 1, which: limit + extra}) if hybrid else cls(limit + extra)
    message = re.escape(f"{which}={limit + extra} is larger than min(out_features, in_features)={limit}")
    for call in (lambda: bad.shapes(out, inp), lambda: bad.init(torch.zeros(out, inp)),
                 lambda: bad.num_params(out, inp)):
        with pytest.raises(ValueError, match=message):
            call()
    good = cls(**{"rank": 1, which: limit}) if hybrid else cls(limit)
    assert good.num_params(out, inp) == stored_size(good, out, inp)
