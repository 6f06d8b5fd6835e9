"""Tests for moil.export.merged: merged Hugging Face checkpoints, original model untouched."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch.func import functional_call

import moil.approx as ma
from moil.export import export_merged, merged_copy

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
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _base(model) -> dict[str, torch.Tensor]:
    named = dict(model.named_parameters())
    return {f"{t}.{k}": named[f"{t}.{k}"].detach() for t in TARGETS for k in ("weight", "bias")}


def _trained(params: dict, seed: int = 2) -> dict:
    """Non-trivial adapter values (init gives Ŵ = W0)."""
    g = torch.Generator().manual_seed(seed)
    return {k: 0.1 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _effective(model, g_seed: int = 3) -> dict[str, torch.Tensor]:
    """Merged Hybrid targets (weights and biases change) plus a changed head."""
    base = _base(model)
    adapter = ma.Adapter(ma.Hybrid(4, transform_rank=3), TARGETS, ma.Sharing(ma.TRANSFORM_KEYS))
    params = _trained(adapter.init(base, generator=torch.Generator().manual_seed(g_seed)))
    g = torch.Generator().manual_seed(g_seed)
    heads = {
        "classifier.weight": torch.randn(3, 32, generator=g),
        "classifier.bias": torch.randn(3, generator=g),
    }
    return {**adapter.merge(params, base), **heads}


def test_reloaded_export_equals_functional_forward_and_original_is_untouched(tmp_path):
    """from_pretrained(export) computes functional_call(model, tensors) (atol 1e-5); model unchanged."""
    model = _bert()
    before = _snapshot(model)
    tensors = _effective(model)
    out = export_merged(model, tensors, tmp_path / "merged")
    assert (out / "config.json").is_file() and any(out.glob("*.safetensors"))
    assert not any(out.glob("*.bin"))

    reloaded = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    batch = _batch()
    with torch.no_grad():
        want = functional_call(model, tensors, (), batch).logits
        got = reloaded(**batch).logits
        plain = model(**batch).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (plain - want).abs().max() > 1e-2  # the export really changed the model
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_merged_copy_casts_to_model_dtype_and_leaves_inputs_alone():
    """Float64 overrides are cast to the model's float32; the copy shares no storage with model."""
    model = _bert()
    key = f"{TARGETS[0]}.weight"
    value = torch.randn(32, 32, dtype=torch.float64)
    copy = merged_copy(model, {key: value})
    param = dict(copy.named_parameters())[key]
    assert param.dtype == torch.float32 and torch.equal(param, value.float())
    assert value.dtype == torch.float64
    original = dict(model.named_parameters())[key]
    assert param.data_ptr() != original.data_ptr() and not torch.equal(original, param)


def test_bias_on_bias_free_layer_is_explained(tmp_path):
    """A Transform on a bias=False layer adds b̂ ≠ 0: the export refuses, naming the layer and why."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=99,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    target = "model.layers.0.self_attn.q_proj"
    base = {f"{target}.weight": model.get_parameter(f"{target}.weight").detach()}
    adapter = ma.Adapter(ma.Transform(2), [target])
    merged = adapter.merge(_trained(adapter.init(base)), base)
    assert f"{target}.bias" in merged
    with pytest.raises(ValueError, match="bias-free layer.*added a bias.*cannot hold"):
        export_merged(model, merged, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_keys_and_wrong_shapes_raise_clear_errors(tmp_path):
    """A typo gets close-match suggestions; a wrong shape names both shapes."""
    model = _bert()
    with pytest.raises(KeyError, match="did you mean"):
        export_merged(
            model,
            {"bert.encoder.layer.0.attention.self.qeury.weight": torch.zeros(32, 32)},
            tmp_path / "o",
        )
    with pytest.raises(ValueError, match=r"shape \(32, 31\).*\(32, 32\)"):
        export_merged(model, {f"{TARGETS[0]}.weight": torch.zeros(32, 31)}, tmp_path / "o")
    with pytest.raises(TypeError, match="save_pretrained"):
        export_merged(torch.nn.Linear(2, 2), {}, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_existing_directories_are_protected(tmp_path):
    """A non-empty out_dir needs overwrite=True, and even then only a previous export is replaced."""
    model = _bert()
    out = tmp_path / "merged"
    export_merged(model, {}, out)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_merged(model, _effective(model), out)
    export_merged(model, _effective(model), out, overwrite=True)
    reloaded = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    torch.testing.assert_close(reloaded.classifier.bias, _effective(model)["classifier.bias"])

    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a previous merged export"):
        export_merged(model, {}, precious, overwrite=True)
    assert (precious / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "merged"]


def test_failure_while_saving_leaves_nothing(tmp_path, monkeypatch):
    """If save_pretrained fails midway, neither out_dir nor a temporary directory remains."""
    model = _bert()

    def broken(self, directory, **kwargs):
        (directory / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(transformers.BertForSequenceClassification, "save_pretrained", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_merged(model, {}, tmp_path / "merged")
    assert list(tmp_path.iterdir()) == []
