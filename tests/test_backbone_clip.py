"""Tests for moil.backbones.clip: dual-encoder targets, contrastive outputs, zero-shot helpers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moil.backbones import clip
from moil.backbones.checks import assert_untouched, reference_outputs, snapshot

LAYERS = 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add synchronisation cost
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model(one_thread):
    return clip.tiny(seed=0)


@pytest.fixture(autouse=True)
def untouched(model):
    before = snapshot(model)
    yield
    assert_untouched(model, before)


def make_batch(b: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(3, 99, (b, 6), generator=g),
        "attention_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 5 + [0]])[:b],
        "pixel_values": torch.randn(b, 3, 32, 32, generator=g),
    }


def test_identity_forward_equals_model(model):
    bb = clip.build(model)
    batch = make_batch()
    got = bb({**bb.base(), **bb.head_params()}, batch)
    with torch.no_grad():
        ref = model(**bb.inputs(batch))
    assert set(got) == {"image_embeds", "text_embeds", "logit_scale"}
    torch.testing.assert_close(got["image_embeds"], ref.image_embeds, atol=1e-6, rtol=0)
    torch.testing.assert_close(got["text_embeds"], ref.text_embeds, atol=1e-6, rtol=0)
    assert got["logit_scale"].shape == () and torch.equal(got["logit_scale"], model.logit_scale.detach())
    logits = got["logit_scale"].exp() * got["image_embeds"] @ got["text_embeds"].T
    torch.testing.assert_close(logits, ref.logits_per_image, atol=1e-5, rtol=1e-5)


def test_override_equals_deep_copy_and_passthrough_follows_params(model):
    bb = clip.build(model)
    batch = make_batch()
    t = "vision_model.encoder.layers.1.self_attn.v_proj"
    w = bb.base()[f"{t}.weight"]
    over = {f"{t}.weight": w + 0.5 * torch.randn(w.shape, generator=torch.Generator().manual_seed(4)),
            "logit_scale": torch.tensor(1.5)}
    got = bb(over, batch)
    ref = reference_outputs(bb, over, batch)
    torch.testing.assert_close(got["image_embeds"], ref["image_embeds"], atol=1e-6, rtol=1e-6)
    assert (got["image_embeds"] - bb({}, batch)["image_embeds"]).abs().max() > 1e-4
    assert got["logit_scale"] == 1.5 == ref["logit_scale"]


def test_targets_heads_and_sharing(model):
    bb = clip.build(model)
    assert len(bb.targets) == 2 * 3 * LAYERS  # two towers
    groups: dict[str, list[str]] = {}
    for t in bb.targets:
        groups.setdefault(bb.sharing.group(t), []).append(t.rsplit(".", 1)[1])
    assert {g: sorted(m) for g, m in groups.items()} == {  # CLIP declares k, v, q in that order
        f"{tower}_model.encoder.layers.{i}.self_attn": ["k_proj", "q_proj", "v_proj"]
        for tower in ("text", "vision") for i in range(LAYERS)
    }
    assert bb.heads == ("logit_scale",)
    assert clip.build(model, projections=True).heads == ("logit_scale", "visual_projection.weight", "text_projection.weight")
    assert len(clip.build(model, mlp=True).targets) == 2 * 5 * LAYERS
    only_vision = clip.build(model, exclude=r"text_model\..*")
    assert all(t.startswith("vision_model.") for t in only_vision.targets)


def test_grad_of_contrastive_loss(model):
    bb = clip.build(model)
    batch = make_batch()
    trainable = {**bb.base(), **bb.head_params()}

    def loss(params):
        out = bb(params, batch)
        logits = out["logit_scale"].exp() * out["image_embeds"] @ out["text_embeds"].T
        labels = torch.arange(logits.shape[0])
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    grads = torch.func.grad(loss)(trainable)
    for key, gr in grads.items():
        assert torch.isfinite(gr).all() and gr.abs().sum() > 0, key


def test_zero_shot_helpers_match_the_full_forward(model):
    bb = clip.build(model)
    batch = make_batch()
    t = "text_model.encoder.layers.0.self_attn.q_proj"
    w = bb.base()[f"{t}.weight"]
    over = {f"{t}.weight": w + 0.5}
    full = bb(over, batch)
    text = clip.encode_text(bb, over, batch["input_ids"], batch["attention_mask"])
    image = clip.encode_image(bb, over, batch["pixel_values"])
    torch.testing.assert_close(text, full["text_embeds"], atol=1e-6, rtol=0)
    torch.testing.assert_close(image, full["image_embeds"], atol=1e-6, rtol=0)
    logits = clip.zero_shot_logits(image, text, full["logit_scale"])
    assert logits.shape == (3, 3)
    # K prompt templates per class are averaged then re-normalised: (C, K, L) -> (C, D)
    ids = batch["input_ids"].reshape(3, 1, 6).expand(3, 2, 6)
    torch.testing.assert_close(clip.encode_text(bb, over, ids), clip.encode_text(bb, over, batch["input_ids"]),
                               atol=1e-6, rtol=0)
