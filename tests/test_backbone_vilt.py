"""Tests for moil.backbones.vilt (the reference backbone) and the Backbone contract."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from moil.approx import Hybrid, LowRank
from moil.backbones import vilt
from moil.backbones.checks import assert_untouched, record_inputs, reference_outputs, snapshot

TASKS = ("itm", "vqa", "nlvr2")
KEY = {"itm": "itm_logits", "vqa": "vqa_logits", "nlvr2": "pair_logits"}
LAYERS = 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny tensors: intra-op threads only add synchronisation cost (2 ms vs 7 µs a linear
    # on a busy 2-core box). Restored afterwards, so other test modules are unaffected.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def models(one_thread):
    return {task: vilt.tiny(task, seed=i) for i, task in enumerate(TASKS)}


@pytest.fixture(autouse=True)
def untouched(models):
    """Every test leaves every user model exactly as it found it."""
    before = {t: snapshot(m) for t, m in models.items()}
    yield
    for t, m in models.items():
        assert_untouched(m, before[t])


def make_batch(task: str, b: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = (b, 2, 3, 32, 32) if task == "nlvr2" else (b, 3, 32, 32)
    return {
        "input_ids": torch.randint(3, 99, (b, 6), generator=g),
        "attention_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 5 + [0]])[:b],
        "pixel_values": torch.randn(images, generator=g),
        "itm_labels": torch.tensor([1, 0, 1])[:b],
        "pair_labels": torch.tensor([0, 1, 1])[:b],
        "vqa_targets": torch.rand(b, 5, generator=g),
    }


def seeded(fn):
    # ViLT's patch embedding samples patch order with torch.multinomial.
    torch.manual_seed(0)
    return fn()


@pytest.mark.parametrize("task", TASKS)
def test_identity_forward_equals_model(models, task):
    model = models[task]
    bb = vilt.build(model)
    batch = make_batch(task)
    kwargs = bb.inputs(batch)
    assert not {"itm_labels", "pair_labels", "vqa_targets", "labels"} & kwargs.keys()
    got = seeded(lambda: bb({**bb.base(), **bb.head_params()}, batch))
    with torch.no_grad():
        ref = seeded(lambda: model(**kwargs)).logits
    assert list(got) == [KEY[task]]
    if task == "itm":  # [0, s]: CE on it is BCE on the score s
        torch.testing.assert_close(got["itm_logits"][:, 1:], ref, atol=1e-6, rtol=0)
        assert torch.all(got["itm_logits"][:, 0] == 0)
    else:
        torch.testing.assert_close(got[KEY[task]], ref, atol=1e-6, rtol=0)
    # with no overrides the model's own tensors are used — detached: no graph is built
    plain = seeded(lambda: bb({}, batch))[KEY[task]]
    torch.testing.assert_close(plain, got[KEY[task]], atol=0, rtol=0)
    assert not plain.requires_grad


@pytest.mark.parametrize("task", TASKS)
def test_override_equals_deep_copy_with_replaced_weights(models, task):
    bb = vilt.build(models[task])
    batch = make_batch(task)
    g = torch.Generator().manual_seed(1)
    base, heads = bb.base(), bb.head_params()
    t = bb.targets[4]  # layer 1 key
    head = bb.heads[-2]
    over = {
        f"{t}.weight": base[f"{t}.weight"] + 0.5 * torch.randn(base[f"{t}.weight"].shape, generator=g),
        f"{t}.bias": base[f"{t}.bias"] + 0.5,
        head: heads[head] + 0.5 * torch.randn(heads[head].shape, generator=g),
    }
    got = seeded(lambda: bb(over, batch))[KEY[task]]
    plain = seeded(lambda: bb({}, batch))[KEY[task]]
    ref = seeded(lambda: reference_outputs(bb, over, batch))[KEY[task]]
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    assert (got - plain).abs().max() > 1e-3


def test_default_targets_heads_and_sharing(models):
    bb = vilt.build(models["vqa"])
    assert len(bb.targets) == 3 * LAYERS
    groups: dict[str, list[str]] = {}
    for t in bb.targets:
        groups.setdefault(bb.sharing.group(t), []).append(t.rsplit(".", 1)[1])
    assert groups == {
        f"vilt.encoder.layer.{i}.attention.attention": ["query", "key", "value"] for i in range(LAYERS)
    }
    assert bb.heads[:2] == ("vilt.pooler.dense.weight", "vilt.pooler.dense.bias")
    assert all(h.startswith(("classifier.", "vilt.pooler.")) for h in bb.heads)
    assert vilt.build(models["vqa"], pooler=False).heads[0].startswith("classifier.")
    assert vilt.build(models["itm"]).heads[-2:] == ("rank_output.weight", "rank_output.bias")

    with_mlp = vilt.build(models["vqa"], mlp=True)
    assert len(with_mlp.targets) == 5 * LAYERS
    assert "vilt.encoder.layer.0.attention.output.dense" not in with_mlp.targets
    assert with_mlp.sharing.group("vilt.encoder.layer.0.output.dense") == "vilt.encoder.layer.0.output.dense"
    with pytest.raises(ValueError, match="not both"):
        vilt.build(models["vqa"], ["query"], mlp=True)


def test_sharing_groups_read_one_input(models):
    bb = vilt.build(models["itm"])
    twin = copy.deepcopy(bb.model)
    seen = record_inputs(twin, list(bb.targets), lambda: seeded(lambda: twin(**bb.inputs(make_batch("itm")))))
    for i in range(LAYERS):
        q, k, v = (seen[f"vilt.encoder.layer.{i}.attention.attention.{n}"] for n in ("query", "key", "value"))
        assert q is k and k is v


def test_grad_of_task_loss_reaches_targets_and_heads(models):
    bb = vilt.build(models["itm"])
    batch = make_batch("itm")
    trainable = {**bb.base(), **bb.head_params()}

    def loss(params):
        logits = bb(params, batch)["itm_logits"]
        return F.cross_entropy(logits, batch["itm_labels"])

    grads = seeded(lambda: torch.func.grad(loss)(trainable))
    assert grads.keys() == trainable.keys()
    for k, gr in grads.items():
        assert torch.isfinite(gr).all(), k
        assert gr.abs().sum() > 0, k


@pytest.mark.parametrize("approx", [Hybrid(2), LowRank(2)])
def test_adapter_identity_at_init_then_changes(models, approx):
    bb = vilt.build(models["vqa"])
    batch = make_batch("vqa")
    ad = bb.adapter(approx)
    assert (ad.sharing is None) == isinstance(approx, LowRank)
    params = ad.init(bb.base(), generator=torch.Generator().manual_seed(0))
    merged = ad.merge(params, bb.base())
    torch.testing.assert_close(
        seeded(lambda: bb(merged, batch))["vqa_logits"],
        seeded(lambda: bb({}, batch))["vqa_logits"], atol=1e-6, rtol=0,
    )
    up = next(k for k in params if k.endswith(("lora_b", "transform_up")))
    params = {**params, up: torch.ones_like(params[up])}
    moved = seeded(lambda: bb(ad.merge(params, bb.base()), batch))["vqa_logits"]
    assert (moved - seeded(lambda: bb({}, batch))["vqa_logits"]).abs().max() > 1e-4


def test_tensors_are_views_heads_are_clones(models):
    model = models["itm"]
    bb = vilt.build(model)
    own = dict(model.named_parameters())
    base = bb.base()
    t = bb.targets[0]
    assert base[f"{t}.weight"].data_ptr() == own[f"{t}.weight"].data_ptr()
    assert not base[f"{t}.weight"].requires_grad
    heads = bb.head_params()
    assert all(heads[h].data_ptr() != own[h].data_ptr() for h in bb.heads)
    frozen = bb.frozen()
    assert not frozen.keys() & (base.keys() | heads.keys())
    every = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    assert frozen.keys() | base.keys() | heads.keys() == every
    assert bb.num_parameters() == sum(p.numel() for p in model.parameters())


def test_unknown_override_and_shape_errors(models):
    bb = vilt.build(models["itm"])
    with pytest.raises(KeyError, match="did you mean|Did you mean"):
        bb({"vilt.encoder.layer.0.attention.attention.querry.weight": torch.zeros(1)}, make_batch("itm"))
    with pytest.raises(ValueError, match="has shape"):
        bb({"rank_output.weight": torch.zeros(3)}, make_batch("itm"))
    with pytest.raises(KeyError, match="pixel_values"):
        bb({}, {"input_ids": torch.zeros(1, 3, dtype=torch.long)})
    with pytest.raises(TypeError, match="from_model"):
        vilt.build(torch.nn.Linear(2, 2))


def test_from_pretrained_loads_a_local_folder(models, tmp_path):
    models["vqa"].save_pretrained(tmp_path)
    bb = vilt.from_pretrained(str(tmp_path), "vqa")
    assert not bb.model.training
    batch = make_batch("vqa")
    torch.testing.assert_close(
        seeded(lambda: bb({}, batch))["vqa_logits"],
        seeded(lambda: vilt.build(models["vqa"])({}, batch))["vqa_logits"], atol=1e-6, rtol=0,
    )
