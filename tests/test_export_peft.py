"""Tests for moil.export.peft: LowRank students as PEFT LoRA adapters PEFT itself loads."""

from __future__ import annotations

import copy
import json
import tempfile

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from torch.func import functional_call

import moil.approx as ma
from moil.export import export_peft
from awkward_bert import DENSE, QKV, TOLERANCE, awkward_bert

peft = pytest.importorskip("peft")

TARGETS = tuple(
    f"bert.encoder.layer.{i}.attention.self.{n}"
    for i in range(2)
    for n in ("query", "key", "value")
)


def _bert(seed: int = 0) -> transformers.BertForSequenceClassification:
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        vocab_size=99,
        num_labels=3,
        initializer_range=0.2,
    )
    return transformers.BertForSequenceClassification(config).eval()


def _batch(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 99, (3, 7), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _base(model) -> dict[str, torch.Tensor]:
    named = dict(model.named_parameters())
    return {f"{t}.{k}": named[f"{t}.{k}"].detach() for t in TARGETS for k in ("weight", "bias")}


def _student(adapter, base, seed: int = 2):
    params = adapter.init(base, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    return {k: 0.2 * torch.randn(v.shape, generator=g) for k, v in params.items()}


def _peft_logits(model, out_dir) -> torch.Tensor:
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(model), out_dir).eval()
    with torch.no_grad():
        return loaded(**_batch()).logits


@pytest.mark.parametrize(
    "approx, sharing",
    [
        (ma.LowRank(4), None),
        (ma.LowRank(4, scale=0.5), ma.Sharing({"lora_a"})),
        (ma.LowRank(3, scale=1.7), None),
    ],
)
def test_peft_model_equals_functional_forward_with_merged_weights(tmp_path, approx, sharing):
    """PeftModel.from_pretrained(export) == functional_call(model, merge(params)), atol 1e-5 (α = s·r)."""
    model = _bert()
    base = _base(model)
    adapter = ma.Adapter(approx, TARGETS, sharing)
    params = _student(adapter, base)
    out = export_peft(tmp_path / "lora", adapter, params, base_model_name_or_path="tiny-bert")
    with torch.no_grad():
        want = functional_call(model, adapter.merge(params, base), (), _batch()).logits
        plain = model(**_batch()).logits
    got = _peft_logits(model, out)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (plain - want).abs().max() > 1e-2  # the student really changes the model
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["lora_alpha"] / config["r"] == pytest.approx(approx.scale, rel=1e-12)


def test_heads_are_exported_as_modules_to_save(tmp_path):
    """Head parameters travel through modules_to_save and PEFT's forward uses them."""
    model = _bert()
    base = _base(model)
    adapter = ma.Adapter(ma.LowRank(2), TARGETS)
    params = _student(adapter, base)
    g = torch.Generator().manual_seed(9)
    heads = {
        "classifier.weight": torch.randn(3, 32, generator=g),
        "classifier.bias": torch.randn(3, generator=g),
    }
    out = export_peft(tmp_path / "lora", adapter, params, heads=heads)
    with torch.no_grad():
        want = functional_call(model, {**adapter.merge(params, base), **heads}, (), _batch()).logits
    torch.testing.assert_close(_peft_logits(model, out), want, atol=1e-5, rtol=0)
    assert json.loads((out / "adapter_config.json").read_text())["modules_to_save"] == [
        "classifier"
    ]


def test_file_format_matches_what_peft_itself_saves(tmp_path):
    """Our keys, shapes and config fields equal those of PEFT's own save_pretrained for the same setup."""
    model = _bert()
    config = peft.LoraConfig(
        r=2, lora_alpha=2, target_modules=list(TARGETS), modules_to_save=["classifier"]
    )
    native = peft.get_peft_model(copy.deepcopy(model), config)
    native.save_pretrained(tmp_path / "native")

    adapter = ma.Adapter(ma.LowRank(2), TARGETS)
    params = _student(adapter, _base(model))
    heads = {k: v.detach() for k, v in model.classifier.named_parameters(prefix="classifier")}
    ours = export_peft(tmp_path / "ours", adapter, params, heads=heads)

    def layout(path):
        with safe_open(path / "adapter_model.safetensors", "pt") as f:
            return f.metadata(), {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__

    assert layout(ours) == layout(tmp_path / "native")
    assert (
        "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"
        in layout(ours)[1]
    )
    theirs = json.loads((tmp_path / "native" / "adapter_config.json").read_text())
    mine = json.loads((ours / "adapter_config.json").read_text())
    for key in (
        "peft_type",
        "r",
        "lora_alpha",
        "use_rslora",
        "bias",
        "fan_in_fan_out",
        "modules_to_save",
    ):
        assert mine[key] == theirs[key], key
    assert sorted(mine["target_modules"]) == sorted(theirs["target_modules"])


def test_non_low_rank_students_are_refused(tmp_path):
    """Transform and Hybrid raise a TypeError pointing to export_merged / save_student."""
    model = _bert()
    base = _base(model)
    for approx in (ma.Hybrid(2), ma.Transform(2)):
        adapter = ma.Adapter(approx, TARGETS)
        with pytest.raises(
            TypeError,
            match="PEFT export holds only LowRank students, got .*export_merged.*save_student",
        ):
            export_peft(tmp_path / "x", adapter, adapter.init(base))
    assert not (tmp_path / "x").exists()


def test_head_module_overlapping_a_target_is_refused(tmp_path):
    """A head that is also a LoRA target (or a suffix of one) cannot go to modules_to_save."""
    model = _bert()
    base = _base(model)
    adapter = ma.Adapter(ma.LowRank(2), TARGETS)
    params = adapter.init(base)
    with pytest.raises(ValueError, match="overlaps the LoRA target"):
        export_peft(
            tmp_path / "x", adapter, params, heads={"self.query.weight": torch.zeros(32, 32)}
        )
    with pytest.raises(ValueError, match="not inside head_modules"):
        export_peft(
            tmp_path / "x",
            adapter,
            params,
            heads={"classifier.bias": torch.zeros(3)},
            head_modules=["bert.pooler"],
        )


# -------------------------------------------------------------- awkward students in PEFT



@settings(derandomize=True, max_examples=10, deadline=None)
@given(
    targets=st.sampled_from([QKV, DENSE, QKV + DENSE]),
    rank=st.integers(1, 16),
    scale=st.sampled_from([1.0, -0.5, 0.3, 2.5]),
    share=st.booleans(),
    dtype=st.sampled_from(list(TOLERANCE)),
    seed=st.integers(0, 2**31),
)
def test_peft_loads_awkward_students_with_equal_outputs(targets, rank, scale, share, dtype, seed):
    """Law: for LowRank students of rank 1 … min(out, in) (= 16, full rank, included) on
    square q/k/v and non-square MLP targets, scales with a non-integer or negative
    ``lora_alpha = s·r``, a q/k/v-shared ``lora_a``, in float64/float32/bfloat16 models,
    PeftModel.from_pretrained(export) — and its merge_and_unload() — give the adapted
    model's outputs functional_call(model, merge(params)) within the dtype's tolerance."""
    model = awkward_bert(dtype, vocab_size=99)
    named = dict(model.named_parameters())
    base = {f"{t}.{k}": named[f"{t}.{k}"].detach() for t in targets for k in ("weight", "bias")}
    sharing = ma.Sharing({"lora_a"}) if share and targets == QKV else None
    adapter = ma.Adapter(ma.LowRank(rank, scale=scale), targets, sharing)
    g = torch.Generator().manual_seed(seed)
    params = {k: (0.2 * torch.randn(v.shape, generator=g, dtype=torch.float64)).to(dtype)
              for k, v in adapter.init(base).items()}
    batch = _batch()
    with torch.no_grad():
        want = functional_call(model, adapter.merge(params, base), (), batch).logits
    tol = TOLERANCE[dtype] * (1 + float(want.abs().max()))
    with tempfile.TemporaryDirectory() as tmp:
        loaded = peft.PeftModel.from_pretrained(copy.deepcopy(model), export_peft(f"{tmp}/lora", adapter, params)).eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(**batch).logits, want, rtol=0, atol=tol)
            torch.testing.assert_close(loaded.merge_and_unload()(**batch).logits, want, rtol=0, atol=tol)
