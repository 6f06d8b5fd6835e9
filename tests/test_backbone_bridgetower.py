"""Tests for moil.backbones.bridgetower: dual-stream targets, cross-attention sharing, fused in_proj."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from moil.approx import Hybrid
from moil.backbones import bridgetower as bt
from moil.backbones.checks import assert_untouched, record_inputs, reference_outputs, snapshot

LAYERS = 2  # text, vision and cross-modal layers of bt.tiny()
VISION_0 = "bridgetower.vision_model.visual.transformer.resblocks.0.attn"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add synchronisation cost
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def models(one_thread):
    return {"itm": bt.tiny("itm", seed=0), "contrastive": bt.tiny("contrastive", seed=1)}


@pytest.fixture(autouse=True)
def untouched(models):
    before = {t: snapshot(m) for t, m in models.items()}
    yield
    for t, m in models.items():
        assert_untouched(m, before[t])


def make_batch(b: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(3, 99, (b, 6), generator=g),
        "attention_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 5 + [0]])[:b],
        "pixel_values": torch.randn(b, 3, 32, 32, generator=g),
        "itm_labels": torch.tensor([1, 0, 1])[:b],
    }


def test_identity_forward_equals_model(models):
    batch = make_batch()
    bb = bt.build(models["itm"])
    got = bb({**bb.base(), **bb.head_params()}, batch)
    with torch.no_grad():
        ref = models["itm"](**bb.inputs(batch))
    torch.testing.assert_close(got["itm_logits"], ref.logits, atol=1e-6, rtol=0)

    bb = bt.build(models["contrastive"])
    got = bb({**bb.base(), **bb.head_params()}, batch)
    with torch.no_grad():
        ref = models["contrastive"](**bb.inputs(batch))
    for key in ("text_embeds", "image_embeds", "cross_embeds"):
        torch.testing.assert_close(got[key], getattr(ref, key), atol=1e-6, rtol=0)
    assert got["logit_scale"].shape == () and got["logit_scale"] == models["contrastive"].logit_scale


def test_default_targets_per_stack_and_groups(models):
    bb = bt.build(models["itm"])
    text = [t for t in bb.targets if ".text_model." in t]
    vision = [t for t in bb.targets if ".vision_model." in t]
    cross_self = [t for t in bb.targets if "_layers." in t and ".attention.self." in t]
    cross_cross = [t for t in bb.targets if ".crossattention.self." in t]
    assert len(text) == 3 * LAYERS
    assert vision == [f"bridgetower.vision_model.visual.transformer.resblocks.{i}.attn.in_proj" for i in range(LAYERS)]
    assert len(cross_self) == len(cross_cross) == 2 * 3 * LAYERS  # two streams
    assert len(bb.targets) == len(text) + len(vision) + len(cross_self) + len(cross_cross)

    groups: dict[str, list[str]] = {}
    for t in bb.targets:
        groups.setdefault(bb.sharing.group(t), []).append(t)
    expected = {}
    for i in range(LAYERS):
        expected[f"bridgetower.text_model.encoder.layer.{i}.attention.self"] = ["query", "key", "value"]
        expected[f"bridgetower.vision_model.visual.transformer.resblocks.{i}.attn.in_proj"] = None
        for side in ("text", "image"):
            stack = f"bridgetower.cross_modal_{side}_layers.{i}"
            expected[f"{stack}.attention.self"] = ["query", "key", "value"]
            expected[f"{stack}.crossattention.self.query"] = None  # q alone
            expected[f"{stack}.crossattention.self"] = ["key", "value"]  # k with v
    assert groups.keys() == expected.keys()
    for g, members in groups.items():
        want = [g] if expected[g] is None else [f"{g}.{n}" for n in expected[g]]
        assert members == want, g


def test_sharing_groups_read_one_input_and_cross_query_does_not(models):
    bb = bt.build(models["itm"])
    twin = copy.deepcopy(bb.model)
    linear = [t for t in bb.targets if not t.endswith(".in_proj")]
    seen = record_inputs(twin, linear, lambda: twin(**bb.inputs(make_batch())))
    groups: dict[str, list[str]] = {}
    for t in linear:
        groups.setdefault(bb.sharing.group(t), []).append(t)
    for members in groups.values():
        assert all(seen[m] is seen[members[0]] for m in members)
    for i in range(LAYERS):
        for side in ("text", "image"):
            cross = f"bridgetower.cross_modal_{side}_layers.{i}.crossattention.self"
            assert seen[f"{cross}.query"].shape != seen[f"{cross}.key"].shape  # other stream
    # the default q/k/v rule would have wrongly grouped the cross-attention query
    from moil.approx import Sharing, TRANSFORM_KEYS

    naive = Sharing(TRANSFORM_KEYS)
    q = "bridgetower.cross_modal_text_layers.0.crossattention.self.query"
    assert naive.group(q) == naive.group(q[:-5] + "key") != bb.sharing.group(q)


def test_override_of_fused_in_proj_equals_copy_loaded_by_hand(models):
    model = models["itm"]
    bb = bt.build(model)
    batch = make_batch()
    base = bb.base()
    g = torch.Generator().manual_seed(2)
    w = base[f"{VISION_0}.in_proj.weight"]
    assert w.shape == (3 * 64, 64)
    new_w = w + 0.3 * torch.randn(w.shape, generator=g)
    new_b = base[f"{VISION_0}.in_proj.bias"] + 0.3
    k = "bridgetower.cross_modal_image_layers.1.crossattention.self.key"
    new_k = base[f"{k}.weight"] + 0.3 * torch.randn(base[f"{k}.weight"].shape, generator=g)
    got = bb({f"{VISION_0}.in_proj.weight": new_w, f"{VISION_0}.in_proj.bias": new_b, f"{k}.weight": new_k}, batch)

    twin = copy.deepcopy(model)
    state = twin.state_dict()
    state.update({f"{VISION_0}.in_proj_weight": new_w, f"{VISION_0}.in_proj_bias": new_b, f"{k}.weight": new_k})
    twin.load_state_dict(state)
    with torch.no_grad():
        ref = twin(**bb.inputs(batch)).logits
    torch.testing.assert_close(got["itm_logits"], ref, atol=1e-6, rtol=1e-6)
    assert (got["itm_logits"] - bb({}, batch)["itm_logits"]).abs().max() > 1e-4
    renamed = bb.to_model_names({f"{VISION_0}.in_proj.weight": new_w, f"{k}.weight": new_k})
    assert renamed.keys() == {f"{VISION_0}.in_proj_weight", f"{k}.weight"}  # for export/load_state_dict
    over = {f"{k}.weight": new_k}
    torch.testing.assert_close(bb(over, batch)["itm_logits"], reference_outputs(bb, over, batch)["itm_logits"],
                               atol=1e-6, rtol=1e-6)


def test_grad_of_itm_loss_reaches_every_target_and_head(models):
    bb = bt.build(models["itm"])
    batch = make_batch()
    trainable = {**bb.base(), **bb.head_params()}

    def loss(params):
        return F.cross_entropy(bb(params, batch)["itm_logits"], batch["itm_labels"])

    grads = torch.func.grad(loss)(trainable)
    for key, gr in grads.items():
        assert torch.isfinite(gr).all(), key
        assert gr.abs().sum() > 0, key


def test_hybrid_adapter_merges_into_the_forward(models):
    bb = bt.build(models["itm"], mlp=True)
    assert sum(".mlp.c_fc" in t or ".mlp.c_proj" in t for t in bb.targets) == 2 * LAYERS
    ad = bb.adapter(Hybrid(2))
    params = ad.init(bb.base(), generator=torch.Generator().manual_seed(0))
    batch = make_batch()
    torch.testing.assert_close(bb(ad.merge(params, bb.base()), batch)["itm_logits"],
                               bb({}, batch)["itm_logits"], atol=1e-6, rtol=0)
