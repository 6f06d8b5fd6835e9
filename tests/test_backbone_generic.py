"""Tests for moil.backbones.from_model: any model, fused qkv layers, bias-free layers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from moil.approx import Hybrid, LowRank, Transform
from moil.backbones import Backbone, from_model
from moil.backbones.checks import assert_untouched, reference_outputs, snapshot


class FusedBlock(nn.Module):
    """Pre-norm attention whose q, k and v come from one fused ``qkv`` linear."""

    def __init__(self, d: int, bias: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=bias)
        self.proj = nn.Linear(d, d, bias=bias)

    def forward(self, x):
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        return x + self.proj(att @ v)


class FusedNet(nn.Module):
    def __init__(self, d: int = 8, bias: bool = True) -> None:
        super().__init__()
        self.embed = nn.Linear(5, d)
        self.blocks = nn.ModuleList([FusedBlock(d, bias), FusedBlock(d, bias)])
        self.classifier = nn.Linear(d, 2)

    def forward(self, features):
        x = self.embed(features)
        for block in self.blocks:
            x = block(x)
        pooled = x.mean(dim=1)
        return pooled, self.classifier(pooled)


def outputs(out, batch):
    return {"itm_logits": out[1]}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def net():
    torch.manual_seed(0)
    model = FusedNet().eval()
    before = snapshot(model)
    yield model
    assert_untouched(model, before)


def batch():
    g = torch.Generator().manual_seed(0)
    return {"features": torch.randn(4, 3, 5, generator=g), "itm_labels": torch.tensor([0, 1, 1, 0])}


def test_fused_qkv_is_one_target_without_sharing(net):
    bb = from_model(net, ["qkv"], heads=["classifier"], outputs=outputs)
    assert bb.targets == ("blocks.0.qkv", "blocks.1.qkv")
    assert bb.sharing is None
    assert bb.heads == ("classifier.weight", "classifier.bias")
    assert bb.inputs(batch()).keys() == {"features"}  # labels are not passed
    b = batch()
    got = bb({**bb.base(), **bb.head_params()}, b)["itm_logits"]
    torch.testing.assert_close(got, net(b["features"])[1], atol=1e-6, rtol=0)

    over = {"blocks.1.qkv.weight": bb.base()["blocks.1.qkv.weight"] * 1.7}
    twin = copy.deepcopy(net)
    twin.load_state_dict({**twin.state_dict(), **over})
    torch.testing.assert_close(bb(over, b)["itm_logits"], twin(b["features"])[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(bb(over, b)["itm_logits"], reference_outputs(bb, over, b)["itm_logits"])

    # Hybrid on a fused layer: one transform for q, k and v together, no sharing needed
    ad = bb.adapter(Hybrid(2))
    assert ad.sharing is None
    params = ad.init(bb.base(), generator=torch.Generator().manual_seed(0))
    grads = torch.func.grad(
        lambda p: F.cross_entropy(bb({**ad.merge(p, bb.base())}, b)["itm_logits"], b["itm_labels"])
    )(params)
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for g in grads.values())


def test_separate_qkv_gets_reference_sharing():
    torch.manual_seed(0)
    model = nn.ModuleDict({"attn": nn.ModuleDict({n: nn.Linear(4, 4) for n in ("query", "key", "value")})})
    bb = from_model(model, r"attn\.(query|key|value)", inputs=lambda b: {}, outputs=outputs)
    assert bb.sharing is not None and {bb.sharing.group(t) for t in bb.targets} == {"attn"}
    assert from_model(model, ["query"], inputs=lambda b: {}, outputs=outputs).sharing is None


def test_bias_override_on_bias_free_layer_is_a_clear_error():
    torch.manual_seed(0)
    model = FusedNet(bias=False).eval()
    bb = from_model(model, ["qkv"], heads=["classifier"], outputs=outputs)
    assert bb.base().keys() == {"blocks.0.qkv.weight", "blocks.1.qkv.weight"}
    merged = bb.adapter(Transform(2)).merge(
        bb.adapter(Transform(2)).init(bb.base(), generator=torch.Generator().manual_seed(0)), bb.base()
    )
    assert "blocks.0.qkv.bias" in merged  # the input-side transform adds a bias
    with pytest.raises(KeyError) as err:
        bb(merged, batch())
    msg = err.value.args[0]
    assert "'blocks.0.qkv'" in msg and "no bias" in msg and "LowRank" in msg and "Transform" in msg
    low = bb.adapter(LowRank(2))  # LowRank leaves the bias alone: works
    out = bb(low.merge(low.init(bb.base()), bb.base()), batch())
    assert out["itm_logits"].shape == (4, 2)


def test_construction_errors(net):
    with pytest.raises(ValueError, match="not linear layers"):
        Backbone(net, ["blocks.0.norm"], (), None, dict, outputs)
    with pytest.raises(ValueError, match="not parameters"):
        Backbone(net, ["blocks.0.qkv"], ["classifer.weight"], None, dict, outputs)
    with pytest.raises(ValueError, match="both heads and target"):
        Backbone(net, ["blocks.0.qkv"], ["blocks.0.qkv.weight"], None, dict, outputs)
    with pytest.raises(ValueError, match="selects no parameter"):
        from_model(net, ["qkv"], heads=["head"])
    with pytest.raises(ValueError, match="matched no linear layer"):
        from_model(net, ["q_proj"])
    with pytest.raises(ValueError, match="a LayerNorm, not a linear layer"):
        from_model(net, ["norm"])
    wide = nn.ModuleDict({"a": nn.ModuleDict({"query": nn.Linear(4, 4), "key": nn.Linear(5, 4)})})
    with pytest.raises(ValueError, match="mixes input widths"):
        from_model(wide, ["query", "key"], inputs=lambda b: {}, outputs=outputs)


def test_train_mode_is_followed_not_changed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2)).train()
    bb = from_model(model, ["0"], inputs=lambda b: {"input": b["x"]}, outputs=lambda o, b: {"logits": o})
    x = {"x": torch.ones(64, 4)}
    torch.manual_seed(1)
    a = bb({}, x)["logits"]
    torch.manual_seed(2)
    b = bb({}, x)["logits"]
    assert not torch.equal(a, b)  # dropout active, as the model is in train mode
    assert model.training and all(m.training for m in model.modules())
