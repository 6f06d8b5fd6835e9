"""Data-aware closed-form fits (moil.solvers.data_aware) and the input moments they read.

Laws checked:
* ``whitening``: ``S S = Σ`` and ``S S⁺ S = S`` for any PSD ``Σ`` (rank-deficient included).
* ``WhitenedSVDFit`` is the Eckart–Young optimum in the Σ-norm: its output error on the
  sample equals ``Σ_{i>r} σ_i(Δ S)²`` and is ≤ the Frobenius-optimal ``SVDFit``'s.
* With ``Σ = I`` the whitened fits are the Frobenius fits (``SVDFit`` / ``ALSFit``).
* ``WhitenedALSFit`` never increases the Σ-error (more rounds ≤ fewer) and is ≤
  ``WhitenedSVDFit`` at the same low rank.
* ``input_moments`` equals ``XᵀX / N`` of each target's inputs recorded by a hook on a
  copy, and leaves the model untouched.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

import moil.approx as ma
from moil.solvers import ALSFit, SVDFit, WhitenedALSFit, WhitenedSVDFit, whitening

TARGETS = ("b0.attn.query", "b0.attn.key", "b0.attn.value")


def _case(seed: int, out: int, inp: int, n: int, approx, sharing=None):
    """Base and target weights of three q/k/v-like layers and ``n`` input samples ``(n, in)``."""
    g = torch.Generator().manual_seed(seed)
    base, target = {}, {}
    for t in TARGETS:
        base[f"{t}.weight"] = torch.randn(out, inp, generator=g, dtype=torch.float64)
        target[f"{t}.weight"] = base[f"{t}.weight"] + 0.5 * torch.randn(out, inp, generator=g, dtype=torch.float64)
        base[f"{t}.bias"] = torch.randn(out, generator=g, dtype=torch.float64)
        target[f"{t}.bias"] = base[f"{t}.bias"] + 0.1
    # Correlated, anisotropic inputs: what makes the Σ-norm differ from the Frobenius norm.
    mix = torch.randn(inp, inp, generator=g, dtype=torch.float64) * torch.logspace(0, -2, inp, dtype=torch.float64)
    x = torch.randn(n, inp, generator=g, dtype=torch.float64) @ mix
    adapter = ma.Adapter(approx, TARGETS, ma.Sharing(sharing) if sharing else None)
    params = adapter.init(base, generator=torch.Generator().manual_seed(seed + 1))
    params = {k: v.double() for k, v in params.items()}
    moments = {f"{t}.weight": x.T @ x / n for t in TARGETS}
    return adapter, base, target, params, x, moments


def _output_error(adapter, base, target, params, x) -> float:
    """``Σ_t ‖(W̄_t − Ŵ_t) xᵀ‖² / n`` — the weights' part of the output error on the sample."""
    merged = adapter.merge(params, base)
    return sum(float(((target[f"{t}.weight"] - merged[f"{t}.weight"]) @ x.T).pow(2).sum()) for t in TARGETS) / len(x)


shapes = st.tuples(st.integers(3, 7), st.integers(3, 7), st.integers(2, 12), st.integers(1, 2), st.integers(0, 10_000))


@settings(max_examples=40, deadline=None)
@given(inp=st.integers(2, 7), n=st.integers(1, 10), seed=st.integers(0, 10_000))
def test_whitening_is_the_symmetric_root_and_its_pseudo_inverse(inp, n, seed):
    """S S = Σ and S S⁺ S = S, also when Σ is rank-deficient (n < in)."""
    x = torch.randn(n, inp, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    sigma = x.T @ x / n
    s, s_pinv = whitening(sigma)
    assert_close(s @ s, sigma, atol=1e-10, rtol=1e-8)
    assert_close(s @ s_pinv @ s, s, atol=1e-10, rtol=1e-8)


@settings(max_examples=40, deadline=None)
@given(shapes)
def test_whitened_svd_is_the_sigma_norm_optimum(case):
    """Output error of WhitenedSVDFit = Σ_{i>r} σ_i(ΔS)² ≤ SVDFit's output error."""
    out, inp, n, rank, seed = case
    adapter, base, target, params, x, moments = _case(seed, out, inp, n, ma.LowRank(rank))
    whitened = WhitenedSVDFit(moments).fit(adapter, base, target, params)
    frobenius = SVDFit().fit(adapter, base, target, params)
    e_white = _output_error(adapter, base, target, whitened, x)
    e_frob = _output_error(adapter, base, target, frobenius, x)
    floor = 0.0
    for t in TARGETS:
        s, _ = whitening(moments[f"{t}.weight"])
        sv = torch.linalg.svdvals((target[f"{t}.weight"] - base[f"{t}.weight"]) @ s)
        floor += float((sv[rank:] ** 2).sum())
    assert e_white == pytest.approx(floor, rel=1e-7, abs=1e-9)
    assert e_white <= e_frob * (1 + 1e-9) + 1e-12


def test_identity_moment_gives_the_frobenius_fits():
    """Σ = I: WhitenedSVDFit == SVDFit and WhitenedALSFit == ALSFit (merged weights)."""
    for approx, sharing, white, plain in [
        (ma.LowRank(2), None, WhitenedSVDFit, SVDFit()),
        (ma.Hybrid(2), ma.TRANSFORM_KEYS, WhitenedALSFit, ALSFit(iterations=4)),
        (ma.Transform(2), ma.TRANSFORM_KEYS, WhitenedALSFit, ALSFit()),
    ]:
        adapter, base, target, params, _, _ = _case(3, 6, 5, 20, approx, sharing)
        eye = {f"{t}.weight": torch.eye(5, dtype=torch.float64) for t in TARGETS}
        kwargs = {"iterations": 4} if white is WhitenedALSFit else {}
        a = adapter.merge(white(eye, **kwargs).fit(adapter, base, target, params), base)
        b = adapter.merge(plain.fit(adapter, base, target, params), base)
        for key in b:
            assert_close(a[key], b[key], atol=1e-9, rtol=1e-9, msg=f"{type(approx).__name__} {key}")


@settings(max_examples=25, deadline=None)
@given(shapes)
def test_whitened_als_never_increases_the_sigma_error(case):
    """Σ-error after 4 rounds ≤ after 1 round ≤ WhitenedSVDFit's at the same low rank."""
    out, inp, n, rank, seed = case
    adapter, base, target, params, x, moments = _case(seed, out, inp, n, ma.Hybrid(rank), ma.TRANSFORM_KEYS)
    one = _output_error(adapter, base, target, WhitenedALSFit(moments, iterations=1).fit(adapter, base, target, params), x)
    four = _output_error(adapter, base, target, WhitenedALSFit(moments, iterations=4).fit(adapter, base, target, params), x)
    low = ma.Adapter(ma.LowRank(rank), TARGETS)
    low_params = {k: v.double() for k, v in low.init(base, generator=torch.Generator().manual_seed(0)).items()}
    svd = _output_error(low, base, target, WhitenedSVDFit(moments).fit(low, base, target, low_params), x)
    tol = 1e-9 * max(svd, 1.0)
    assert four <= one + tol
    assert one <= svd + tol


def test_whitened_fits_name_a_missing_or_misshapen_moment():
    adapter, base, target, params, _, moments = _case(0, 6, 5, 20, ma.LowRank(2))
    with pytest.raises(KeyError, match="b0.attn.query.*input_moments"):
        WhitenedSVDFit({}).fit(adapter, base, target, params)
    bad = {k: torch.eye(4, dtype=torch.float64) for k in moments}
    with pytest.raises(ValueError, match=r"shape \(4, 4\), expected \(5, 5\)"):
        WhitenedSVDFit(bad).fit(adapter, base, target, params)
    with pytest.raises(TypeError, match="WhitenedALSFit"):
        WhitenedSVDFit(moments).fit(ma.Adapter(ma.Hybrid(2), TARGETS), base, target, params)
    with pytest.raises(ValueError, match="second moment is zero"):
        whitening(torch.zeros(3, 3))


def test_input_moments_equal_the_recorded_inputs_and_leave_the_model_alone():
    """Σ_t = XᵀX/N of every input row reaching target t (a hook on a *copy* records X); over two
    batches of equal size it is the mean of the two batches' moments; the model is untouched."""
    from moil.backbones import input_moments, vilt
    from vilt_batches import make_batches

    backbone = vilt.build(vilt.tiny("itm"))
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    b1, b2 = make_batches(2, seed=0, size=3)
    params = {**backbone.base(), **backbone.head_params()}

    reference = copy.deepcopy(backbone.model)
    seen: dict[str, torch.Tensor] = {}
    for t in backbone.targets:
        reference.get_submodule(t).register_forward_pre_hook(
            lambda mod, args, t=t: seen.__setitem__(t, args[0].detach().reshape(-1, args[0].shape[-1]).double())
        )
    twin = vilt.build(reference)
    torch.manual_seed(0)  # ViLT samples image patches: the same draws for both forwards
    twin({**twin.base(), **twin.head_params()}, b1)
    torch.manual_seed(0)
    one = input_moments(backbone, params, [b1])
    assert set(one) == {f"{t}.weight" for t in backbone.targets}
    for t in backbone.targets:
        x = seen[t]
        assert_close(one[f"{t}.weight"], x.T @ x / len(x), atol=1e-10, rtol=1e-10)
    torch.manual_seed(0)
    both = input_moments(backbone, params, [b1, b2])
    torch.manual_seed(0)
    input_moments(backbone, params, [b1])  # b2 then draws from the RNG state b1 left
    two = input_moments(backbone, params, [b2])
    for k in both:
        assert_close(both[k], (one[k] + two[k]) / 2, atol=1e-10, rtol=1e-10)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in backbone.model.modules())
    for k, v in backbone.model.state_dict().items():
        assert torch.equal(v, before[k]), k


# ------------------------------------------------------ the laws on awkward cases

@st.composite
def awkward(draw):
    """Three targets reading one input: ``out``, ``in`` from 1 to 6 (``1 × n``, ``n × 1``),
    ``n`` samples from 1 (Σ of rank 1, fewer samples than ``in``) to 12, inputs of scales
    1e-3 … 1e3 per direction, weights float64 or float32 (the moments float64, as
    ``input_moments`` gives them), ranks 1 … ``min(out, in)``, ``transform_rank`` apart."""
    out, inp, n = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 12))
    limit = min(out, inp)
    rank, r_t = draw(st.integers(1, limit)), draw(st.integers(1, limit))
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    base, target = {}, {}
    for t in TARGETS:
        w0 = torch.randn(out, inp, generator=g, dtype=torch.float64)
        base[f"{t}.weight"] = w0.to(dtype)
        target[f"{t}.weight"] = (w0 + torch.randn(out, inp, generator=g, dtype=torch.float64)).to(dtype)
    x = torch.randn(n, inp, generator=g, dtype=torch.float64) * torch.logspace(-3, 3, inp, dtype=torch.float64)
    return base, target, x, rank, r_t, dtype


def _sigma_error(adapter, base, target, params, x) -> float:
    merged = adapter.merge(params, base)
    return sum(float(((target[f"{t}.weight"].double() - merged[f"{t}.weight"].double()) @ x.T).square().sum())
               for t in TARGETS) / len(x)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(awkward())
def test_whitened_fits_beat_frobenius_fits_on_the_sample_on_awkward_cases(case):
    """Laws: (1) WhitenedSVDFit's output error on the sample is the floor Σ_{i>r} σ_i(Δ S)²
    and ≤ SVDFit's — also with fewer samples than inputs (rank-deficient Σ); (2)
    WhitenedALSFit (Hybrid, shared transform) is ≤ WhitenedSVDFit at the same low rank and
    its rounds never raise the Σ-error (1 round ≥ 3 rounds); (3) every fitted tensor is
    finite and in the weights' dtype."""
    base, target, x, rank, r_t, dtype = case
    moments = {f"{t}.weight": x.T @ x / len(x) for t in TARGETS}
    scale = sum(float((target[f"{t}.weight"].double() @ x.T).square().sum()) for t in TARGETS) / len(x)
    tol = (1e-9 if dtype == torch.float64 else 1e-4) * (1 + scale)
    low = ma.Adapter(ma.LowRank(rank), TARGETS)
    start = low.init(base, generator=torch.Generator().manual_seed(0))
    white = WhitenedSVDFit(moments).fit(low, base, target, start)
    e_white = _sigma_error(low, base, target, white, x)
    e_frob = _sigma_error(low, base, target, SVDFit().fit(low, base, target, start), x)
    floor = 0.0
    for t in TARGETS:
        s, _ = whitening(moments[f"{t}.weight"])
        delta = target[f"{t}.weight"].double() - base[f"{t}.weight"].double()
        floor += float((torch.linalg.svdvals(delta @ s)[rank:] ** 2).sum())
    assert abs(e_white - floor) <= tol and e_white <= e_frob + tol
    hybrid = ma.Adapter(ma.Hybrid(rank, transform_rank=r_t), TARGETS, ma.Sharing(ma.TRANSFORM_KEYS))
    begin = hybrid.init(base, generator=torch.Generator().manual_seed(1))
    one, three = (WhitenedALSFit(moments, iterations=k, tolerance=0).fit(hybrid, base, target, begin) for k in (1, 3))
    for fitted in (white, one, three):
        assert all(v.isfinite().all() and v.dtype == dtype for v in fitted.values())
    e_one, e_three = (_sigma_error(hybrid, base, target, p, x) for p in (one, three))
    assert e_three <= e_one + tol and e_one <= e_white + tol
