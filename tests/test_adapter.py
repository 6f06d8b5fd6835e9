"""Tests for moil.approx.adapter: one approximation over named targets, with declared sharing."""

from __future__ import annotations

import re

import attrs
import pytest
import torch

from moil.approx import SEP, TRANSFORM_KEYS, Adapter, Hybrid, LowRank, OutputTransform, Sharing

# Two blocks: q (6×5, bias), k (4×5, no bias), v (6×5, bias) read one input of width 5;
# an MLP layer (3×6, bias) matches no q/k/v suffix and is a group of its own.
QKV = ("query", "key", "value")
TARGETS = [f"enc.{i}.attn.{n}" for i in range(2) for n in QKV] + [
    f"enc.{i}.mlp.fc" for i in range(2)
]
SHAPES = {"query": (6, 5), "key": (4, 5), "value": (6, 5), "fc": (3, 6)}


def make_base(seed=0):
    g = torch.Generator().manual_seed(seed)
    base = {}
    for t in TARGETS:
        out_f, in_f = SHAPES[t.rsplit(".", 1)[1]]
        base[f"{t}.weight"] = torch.randn(out_f, in_f, generator=g, dtype=torch.float64)
        if not t.endswith("key"):
            base[f"{t}.bias"] = torch.randn(out_f, generator=g, dtype=torch.float64)
    return base


def randomise(params, seed=1):
    """Same keys and shapes, N(0, 0.25) entries: away from the identity at init."""
    g = torch.Generator().manual_seed(seed)
    return {k: 0.5 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}


def shared_hybrid():
    return Adapter(Hybrid(2), TARGETS, Sharing(TRANSFORM_KEYS))


def test_shared_params_are_one_tensor_per_group():
    """Each q/k/v group stores one copy of each transform key (owner = group) and every member's
    view holds that very tensor; lora_a/lora_b stay per target; the MLP layer owns all of its."""
    ad, base = shared_hybrid(), make_base()
    params = ad.init(base)
    for i in range(2):
        group = f"enc.{i}.attn"
        for k in TRANSFORM_KEYS:
            assert f"{group}{SEP}{k}" in params
            for n in QKV:
                assert ad.target_params(params, f"{group}.{n}")[k] is params[f"{group}{SEP}{k}"]
                assert f"{group}.{n}{SEP}{k}" not in params
        for n in QKV:
            assert {f"{group}.{n}{SEP}lora_a", f"{group}.{n}{SEP}lora_b"} <= set(params)
        assert all(
            f"enc.{i}.mlp.fc{SEP}{k}" in params for k in (*TRANSFORM_KEYS, "lora_a", "lora_b")
        )
    # per block: 4 shared + 3 × 2 low-rank + 6 for the MLP layer
    assert len(params) == 2 * (4 + 3 * 2 + 6)
    assert ad.groups()["enc.0.attn"] == tuple(f"enc.0.attn.{n}" for n in QKV)


def test_num_params_counts_shared_once():
    """num_params = Σ sizes of init's tensors = per block 27 (shared transform, d = 5, r = 2)
    + 22 + 18 + 22 (lora of q, k, v) + 50 (MLP: lora 18 + transform 32) = 139, ×2 blocks = 278."""
    ad, base = shared_hybrid(), make_base()
    params = ad.init(base)
    assert ad.num_params(base) == sum(v.numel() for v in params.values()) == 278
    unshared = Adapter(Hybrid(2), TARGETS)
    assert unshared.num_params(base) == 278 + 2 * 2 * 27  # two extra transform copies per block
    assert unshared.num_params(base) == sum(v.numel() for v in unshared.init(base).values())


def test_num_params_of_a_user_approximation_counts_shared_once():
    """A user approximation is counted from its shapes(), a shared parameter once: the total size
    of init's tensors."""

    @attrs.frozen
    class Bare:
        inner: LowRank = attrs.field(factory=lambda: LowRank(2))
        shareable = frozenset({"lora_a"})

        def shapes(self, out_features, in_features):
            return self.inner.shapes(out_features, in_features)

        def weight_and_bias(self, params, w0, b0):
            return self.weight(params, w0), self.bias(params, w0, b0)

        def init(self, w0, b0=None, *, generator=None):
            return self.inner.init(w0, b0, generator=generator)

        def weight(self, params, w0):
            return self.inner.weight(params, w0)

        def bias(self, params, w0, b0):
            return self.inner.bias(params, w0, b0)

        def num_params(self, out_features, in_features):
            return self.inner.num_params(out_features, in_features)

    base = make_base()
    ad = Adapter(Bare(), TARGETS, Sharing("lora_a"))
    assert ad.num_params(base) == sum(v.numel() for v in ad.init(base).values())
    assert ad.num_params(base) == Adapter(LowRank(2), TARGETS, Sharing("lora_a")).num_params(base)


def test_init_is_deterministic_for_a_seeded_generator():
    """init(base, generator=Generator().manual_seed(s)) is a function of s: equal seeds, equal
    params."""
    ad, base = shared_hybrid(), make_base()
    one = ad.init(base, generator=torch.Generator().manual_seed(3))
    two = ad.init(base, generator=torch.Generator().manual_seed(3))
    other = ad.init(base, generator=torch.Generator().manual_seed(4))
    assert list(one) == list(two)
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert not torch.equal(
        one[f"enc.0.attn{SEP}transform_down"], other[f"enc.0.attn{SEP}transform_down"]
    )


def test_merge_at_init_is_the_base():
    """At init Ŵ_t = W0_t and b̂_t = b0_t exactly; a bias-less layer gets a zero bias from the
    transform."""
    ad, base = shared_hybrid(), make_base()
    merged = ad.merge(ad.init(base), base)
    for k, v in base.items():
        assert torch.equal(merged[k], v), k
    assert not merged["enc.0.attn.key.bias"].count_nonzero()
    low = Adapter(LowRank(2), TARGETS)
    assert "enc.0.attn.key.bias" not in low.merge(low.init(base), base)


def test_merge_equals_each_targets_approximation():
    """merge(params, base)[t.weight] = approx.weight(view_t, W0_t) and likewise for the bias,
    where view_t = own params ∪ the group's shared ones."""
    ad, base = shared_hybrid(), make_base()
    params = randomise(ad.init(base))
    merged = ad.merge(params, base)
    for t in TARGETS:
        view, w0, b0 = ad.target_params(params, t), base[f"{t}.weight"], base.get(f"{t}.bias")
        torch.testing.assert_close(
            merged[f"{t}.weight"], ad.approx.weight(view, w0), rtol=0, atol=0
        )
        torch.testing.assert_close(
            merged[f"{t}.bias"], ad.approx.bias(view, w0, b0), rtol=0, atol=0
        )


def test_merge_returns_new_tensors_and_mutates_nothing():
    """merge builds new tensors (no storage shared with base) and leaves params and base as they
    were."""
    ad, base = shared_hybrid(), make_base()
    params = randomise(ad.init(base))
    base_items, param_items = list(base.items()), list(params.items())
    base_copy = {k: v.clone() for k, v in base.items()}
    param_copy = {k: v.clone() for k, v in params.items()}
    merged = ad.merge(params, base)
    assert list(base.items()) == base_items and list(params.items()) == param_items
    assert all(torch.equal(base[k], v) for k, v in base_copy.items())
    assert all(torch.equal(params[k], v) for k, v in param_copy.items())
    storages = {v.untyped_storage().data_ptr() for v in (*base.values(), *params.values())}
    assert all(v.untyped_storage().data_ptr() not in storages for v in merged.values())
    assert not torch.equal(merged["enc.0.attn.query.weight"], base["enc.0.attn.query.weight"])


def test_shared_gradient_is_the_sum_over_members():
    """For f = Σ_t ⟨G_t, Ŵ_t⟩, ∂f/∂(shared D) = Σ_{t in group} ∂⟨G_t, Ŵ_t⟩/∂D_t (torch.func.grad,
    float64)."""
    ad, base = shared_hybrid(), make_base()
    params = randomise(ad.init(base))
    g = torch.Generator().manual_seed(5)
    cot = {
        t: torch.randn(base[f"{t}.weight"].shape, generator=g, dtype=torch.float64) for t in TARGETS
    }

    def total(p):
        merged = ad.merge(p, base)
        return sum((merged[f"{t}.weight"] * cot[t]).sum() for t in TARGETS)

    grads = torch.func.grad(total)(params)

    def member(view, t):
        return (ad.approx.weight(view, base[f"{t}.weight"]) * cot[t]).sum()

    want = 0
    for n in QKV:
        t = f"enc.0.attn.{n}"
        want = want + torch.func.grad(member)(ad.target_params(params, t), t)["transform_down"]
    torch.testing.assert_close(
        grads[f"enc.0.attn{SEP}transform_down"], want, rtol=1e-12, atol=1e-12
    )
    assert all(v.isfinite().all() for v in grads.values())


def test_low_rank_may_share_lora_a():
    """LowRank declares lora_a (r, in) shareable: one A per group, one B per target."""
    ad = Adapter(LowRank(2), TARGETS, Sharing("lora_a"))
    params = ad.init(make_base())
    assert f"enc.0.attn{SEP}lora_a" in params and f"enc.0.attn.query{SEP}lora_a" not in params
    assert f"enc.0.attn.query{SEP}lora_b" in params


@pytest.mark.parametrize(
    "target,group",
    [
        ("encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self"),
        (
            "vision_model.encoder.layers.3.self_attn.k_proj",
            "vision_model.encoder.layers.3.self_attn",
        ),
        ("decoder.block.1.layer.0.SelfAttention.v", "decoder.block.1.layer.0.SelfAttention"),
        ("encoder.layer.0.output.dense", "encoder.layer.0.output.dense"),
    ],
)
def test_sharing_groups_by_stripping_the_qkv_suffix(target, group):
    """group(t) = t without its q/k/v suffix (BERT, CLIP, T5 spellings); no match → t itself."""
    assert Sharing(TRANSFORM_KEYS).group(target) == group


# ------------------------------------------------------------------------------ errors


def test_missing_target_suggests_close_names():
    """A target without '<t>.weight' in base raises KeyError naming it and suggesting close
    matches."""
    ad = Adapter(LowRank(2), ["enc.0.attn.querry"])
    with pytest.raises(
        KeyError, match=re.escape("enc.0.attn.querry") + ".*did you mean.*enc.0.attn.query"
    ):
        ad.init(make_base())
    with pytest.raises(KeyError, match="enc.0.attn.querry"):
        ad.merge({}, make_base())


@pytest.mark.parametrize(
    "approx,key",
    [
        (LowRank(2), "lora_b"),
        (Hybrid(2), "lora_b"),
        (OutputTransform(2), "transform_down"),
    ],
)
def test_sharing_a_non_shareable_key_raises(approx, key):
    """Only names in approx.shareable (input-only parameters) may be shared; the message names the
    key."""
    with pytest.raises(ValueError, match=re.escape(f"cannot share [{key!r}]")):
        Adapter(approx, TARGETS, Sharing(key))


def test_group_members_with_different_input_widths_raise():
    """Members of one group must read inputs of one width; the message names the group and the
    widths."""
    base = {"blk.attn.query.weight": torch.zeros(4, 5), "blk.attn.key.weight": torch.zeros(4, 7)}
    ad = Adapter(Hybrid(2), ["blk.attn.query", "blk.attn.key"], Sharing(TRANSFORM_KEYS))
    with pytest.raises(ValueError, match=re.escape("'blk.attn'") + ".*different widths.*5.*7"):
        ad.init(base)


@pytest.mark.parametrize("key", ["enc.0.attn.query.lora_a", "lora_a", "enc.0.attn.query:lora_a"])
def test_malformed_param_keys_raise(key):
    """A params key without '::' (not '<owner>::<name>') raises KeyError naming it."""
    ad, base = shared_hybrid(), make_base()
    params = dict(ad.init(base))
    params[key] = torch.zeros(2, 5, dtype=torch.float64)
    with pytest.raises(KeyError, match=re.escape(repr(key))):
        ad.merge(params, base)


def test_bad_adapter_configuration_raises():
    """No targets, a target listed twice or an invalid strip regex raise ValueError saying which."""
    with pytest.raises(ValueError, match="targets is empty"):
        Adapter(LowRank(2), [])
    with pytest.raises(ValueError, match=re.escape("['a.query']")):
        Adapter(LowRank(2), ["a.query", "a.query"])
    with pytest.raises(ValueError, match=re.escape("strip='('")):
        Sharing(TRANSFORM_KEYS, strip="(")


def test_shapes_and_keys_are_what_init_makes():
    """shapes(base) = {key: shape} of init(base) in init's order (a shared key once), and key(t, n)
    is '<owner>::<n>': the group for a shared name, the target otherwise."""
    ad, base = shared_hybrid(), make_base()
    params = ad.init(base)
    assert list(ad.shapes(base).items()) == [(k, tuple(v.shape)) for k, v in params.items()]
    assert ad.key("enc.1.attn.key", "transform_up") == f"enc.1.attn{SEP}transform_up"
    assert ad.key("enc.1.attn.key", "lora_b") == f"enc.1.attn.key{SEP}lora_b"
    assert ad.key("enc.1.mlp.fc", "transform_up") == f"enc.1.mlp.fc{SEP}transform_up"
