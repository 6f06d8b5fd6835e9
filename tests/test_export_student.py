"""Tests for moil.export.student: the compact student directory and its safe rebuild."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.func import functional_call

import moil.approx as ma
from moil.checkpoint import CheckpointMismatchError, CorruptCheckpointError
from moil.export import decode_component, encode_component, export_merged, load_student, merged_copy, save_student
from awkward_bert import DENSE, QKV, TOLERANCE, awkward_bert

TARGETS = tuple(
    f"enc.layer.{i}.attention.self.{n}" for i in range(2) for n in ("query", "key", "value")
)


def _base(hidden: int = 12, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for t in TARGETS:
        out[f"{t}.weight"] = torch.randn(hidden, hidden, generator=g)
        out[f"{t}.bias"] = torch.randn(hidden, generator=g)
    return out


def _trained(params: Mapping[str, Tensor], seed: int = 1) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: 0.1 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}


ADAPTERS = {
    "low_rank_shared_a": ma.Adapter(ma.LowRank(3, scale=0.5), TARGETS, ma.Sharing({"lora_a"})),
    "transform_shared": ma.Adapter(ma.Transform(2), TARGETS, ma.Sharing(ma.TRANSFORM_KEYS)),
    "hybrid_shared": ma.Adapter(
        ma.Hybrid(3, transform_rank=2), TARGETS, ma.Sharing(ma.TRANSFORM_KEYS)
    ),
    "hybrid_output_side": ma.Adapter(ma.OutputHybrid(2, scale=-1.5), TARGETS),
}


def _saved(tmp_path, name="hybrid_shared", **kwargs):
    adapter = ADAPTERS[name]
    base = _base()
    params = _trained(adapter.init(base, generator=torch.Generator().manual_seed(0)))
    out = save_student(tmp_path / "student", adapter, params, **kwargs)
    return out, adapter, params, base


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_round_trip_merges_identically(tmp_path, name):
    """merge(load(save(s))) == merge(s) bit for bit, for LowRank, Transform and Hybrid, shared or not."""
    g = torch.Generator().manual_seed(5)
    heads = {
        "classifier.weight": torch.randn(3, 12, generator=g),
        "classifier.bias": torch.randn(3, generator=g),
    }
    out, adapter, params, base = _saved(
        tmp_path,
        name,
        heads=heads,
        base_model="some/hub-id",
        extra={"itm_acc": 0.71, "ranks": [3, 2]},
    )
    assert sorted(p.name for p in out.iterdir()) == ["student.json", "student.safetensors"]
    student = load_student(out, base=base)
    assert student.adapter == adapter
    assert student.base_model == "some/hub-id" and student.extra == {
        "itm_acc": 0.71,
        "ranks": [3, 2],
    }
    assert student.params.keys() == params.keys() and student.heads.keys() == heads.keys()
    assert all(torch.equal(student.heads[k], v) for k, v in heads.items())
    want, got = adapter.merge(params, base), student.adapter.merge(student.params, base)
    assert want.keys() == got.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    if adapter.sharing is not None:  # shared parameters are stored once per group
        assert len(student.params) < len(adapter.targets) * len(adapter.approx.shapes(12, 12))


def test_json_describes_the_adapter(tmp_path):
    """student.json records class path, fields, targets, sharing, versions and key lists."""
    out, _, params, _ = _saved(tmp_path)
    doc = json.loads((out / "student.json").read_text())
    assert doc["format"] == "moil.student" and doc["format_version"] == 1
    assert doc["approximation"] == {
        "class": "moil.approx.hybrid:Hybrid",
        "fields": {"rank": 3, "transform_rank": 2, "scale": 1.0},
    }
    assert doc["targets"] == list(TARGETS)
    assert doc["sharing"] == {"keys": sorted(ma.TRANSFORM_KEYS), "strip": ma.QKV_SUFFIX}
    assert doc["params"] == sorted(params) and doc["heads"] == []


@pytest.mark.parametrize("side,cls", [("input", ma.Hybrid), ("output", ma.OutputHybrid)])
def test_students_saved_with_a_side_field_still_load(tmp_path, side, cls):
    """A student.json from before the output side was its own class ({"class": Hybrid, "fields":
    {..., "side": ...}}) loads as the class of that side and merges as that class."""
    adapter = ma.Adapter(cls(2, scale=-1.5), TARGETS)
    base = _base()
    params = _trained(adapter.init(base))
    out = save_student(tmp_path / "s", adapter, params)
    doc = json.loads((out / "student.json").read_text())
    doc["approximation"] = {
        "class": "moil.approx.hybrid:Hybrid",
        "fields": {"rank": 2, "transform_rank": None, "side": side, "scale": -1.5},
    }
    (out / "student.json").write_text(json.dumps(doc))
    student = load_student(out, base=base)
    assert student.adapter == adapter and type(student.adapter.approx) is cls
    got, want = student.adapter.merge(student.params, base), adapter.merge(params, base)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_wrong_base_is_a_shape_mismatch(tmp_path):
    """Loading against a base of another width names the key and both shapes."""
    out, *_ = _saved(tmp_path)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"another model/config.*has shape \(3, 12\), expected \(3, 16\)",
    ):
        load_student(out, base=_base(hidden=16))
    with pytest.raises(CheckpointMismatchError, match="no weight"):
        load_student(out, base={})


def test_missing_and_corrupt_files(tmp_path):
    """Missing files, bad JSON and a truncated tensor file each raise a clear error with the path."""
    with pytest.raises(FileNotFoundError, match="student.json.*does not exist.*save_student"):
        load_student(tmp_path / "nowhere")
    out, *_ = _saved(tmp_path)
    raw_json = (out / "student.json").read_text()
    (out / "student.json").write_text(raw_json[: len(raw_json) // 2])
    with pytest.raises(CorruptCheckpointError, match="not valid JSON"):
        load_student(out)
    (out / "student.json").write_text(raw_json)
    raw = (out / "student.safetensors").read_bytes()
    (out / "student.safetensors").write_bytes(raw[:-7])
    with pytest.raises(CorruptCheckpointError, match="corrupt or truncated"):
        load_student(out)
    (out / "student.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="student.safetensors"):
        load_student(out)


def test_files_from_different_saves_are_detected(tmp_path):
    """A student.json paired with another save's tensors is refused, not silently mixed."""
    a, *_ = _saved(tmp_path / "a", "hybrid_shared")
    b, *_ = _saved(tmp_path / "b", "low_rank_shared_a")
    (a / "student.safetensors").write_bytes((b / "student.safetensors").read_bytes())
    with pytest.raises(CheckpointMismatchError, match="different saves"):
        load_student(a)


def test_unknown_class_and_untrusted_module(tmp_path, monkeypatch):
    """An unknown class is reported; a class outside moil needs trust_user_classes=True,
    even when reached through an attribute of a moil module."""
    out, *_ = _saved(tmp_path)
    doc = json.loads((out / "student.json").read_text())
    doc["approximation"]["class"] = "moil.approx:DoesNotExist"
    (out / "student.json").write_text(json.dumps(doc))
    with pytest.raises(CorruptCheckpointError, match="unknown class 'moil.approx:DoesNotExist'"):
        load_student(out)
    doc["approximation"]["class"] = "os:system"
    (out / "student.json").write_text(json.dumps(doc))
    with pytest.raises(PermissionError, match="trust_user_classes=True"):
        load_student(out)
    monkeypatch.setattr(ma, "Smuggled", Doubled, raising=False)
    doc["approximation"]["class"] = "moil.approx:Smuggled"
    doc["approximation"]["fields"] = {"rank": 2}
    (out / "student.json").write_text(json.dumps(doc))
    with pytest.raises(PermissionError, match="outside moil"):
        load_student(out)
    doc["approximation"]["class"] = "collections:OrderedDict"
    (out / "student.json").write_text(json.dumps(doc))
    with pytest.raises(CorruptCheckpointError, match="not an attrs class"):
        load_student(out, trust_user_classes=True)


@attrs.frozen
class Doubled:
    """A user approximation outside moil: ``Ŵ = W0 + 2·B A`` via LowRank with a tuple field."""

    rank: int
    tags: tuple[str, ...] = ("user",)
    shareable = frozenset()

    def _inner(self):
        return ma.LowRank(self.rank, scale=2.0)

    def init(self, w0, b0=None, *, generator=None):
        return self._inner().init(w0, b0, generator=generator)

    def shapes(self, out_features, in_features):
        return self._inner().shapes(out_features, in_features)

    def weight(self, params, w0):
        return self._inner().weight(params, w0)

    def bias(self, params, w0, b0):
        return b0

    def weight_and_bias(self, params, w0, b0):
        return self.weight(params, w0), self.bias(params, w0, b0)

    def num_params(self, out_features, in_features):
        return self._inner().num_params(out_features, in_features)


def test_user_class_round_trips_with_explicit_trust(tmp_path):
    """A module-level attrs approximation outside moil loads only with trust_user_classes=True."""
    adapter = ma.Adapter(Doubled(2, tags=("a", "b")), TARGETS[:2])
    base = _base()
    params = _trained(adapter.init(base))
    out = save_student(tmp_path / "s", adapter, params)
    with pytest.raises(PermissionError, match="outside moil"):
        load_student(out, base=base)
    student = load_student(out, base=base, trust_user_classes=True)
    assert student.adapter == adapter and student.adapter.approx.tags == ("a", "b")
    got, want = student.adapter.merge(student.params, base), adapter.merge(params, base)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_component_encoding_keeps_container_types():
    """encode/decode preserve tuples, frozensets, dicts and nested attrs objects exactly."""

    sharing = ma.Sharing({"lora_a", "transform_down"})
    assert decode_component(encode_component(sharing)) == sharing
    spec = encode_component(Doubled(3, tags=("x",)))
    assert spec["fields"]["tags"] == {"__tuple__": ["x"]}
    assert decode_component(spec, trust_user_classes=True) == Doubled(3, tags=("x",))


def test_save_rejects_what_it_cannot_store(tmp_path):
    """Local classes, non-JSON extra and params of another adapter fail at save time, writing nothing."""

    @attrs.frozen
    class Local:
        rank: int = 1

    base = _base()
    adapter = ADAPTERS["hybrid_shared"]
    params = adapter.init(base)
    with pytest.raises(TypeError, match="module level"):
        save_student(tmp_path / "s", ma.Adapter(Local(), TARGETS), {})
    with pytest.raises(TypeError, match="JSON"):
        save_student(tmp_path / "s", adapter, params, extra={"nan_tensor": torch.tensor(math.nan)})
    with pytest.raises(CheckpointMismatchError, match="do not belong"):
        save_student(tmp_path / "s", adapter, {"other.layer::lora_a": torch.zeros(1)})
    assert not (tmp_path / "s").exists()


# ------------------------------- reloaded into a plain transformers model, awkward cases



def _logits(model, tensors=None):
    ids = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if tensors is None:
            return model(input_ids=ids).logits
        return functional_call(model, tensors, (), {"input_ids": ids}).logits


@st.composite
def students(draw):
    """Any built-in approximation on square (q/k/v, 16 × 16) or non-square (the MLP's
    37 × 16 and 16 × 37) targets, ranks 1 … the smallest ``min(out, in)``, ``transform_rank``
    apart, scales ≠ 1, q/k/v sharing where it applies, in a float64/float32/bfloat16 model."""
    targets = draw(st.sampled_from([QKV, DENSE, QKV + DENSE]))
    r, r_t = draw(st.integers(1, 16)), draw(st.integers(1, 16))
    scale = draw(st.sampled_from([1.0, -0.5, 0.3]))
    approx = draw(st.sampled_from([ma.LowRank(r, scale=scale), ma.Transform(r), ma.OutputTransform(r),
                                   ma.Hybrid(r, transform_rank=r_t, scale=scale), ma.OutputHybrid(r, transform_rank=r_t)]))
    # q/k/v share what reads their one input: the transform, or LowRank's lora_a.
    keys = approx.shareable & set(ma.TRANSFORM_KEYS) or approx.shareable
    sharing = ma.Sharing(keys) if targets == QKV and keys and draw(st.booleans()) else None
    return approx, targets, sharing, draw(st.sampled_from(list(TOLERANCE))), draw(st.integers(0, 2**31))


@settings(derandomize=True, max_examples=12, deadline=None)
@given(students())
def test_reloaded_student_merged_into_a_plain_model_gives_the_adapted_outputs(case):
    """Law: for any stored student, load_student → merge → merged_copy of a fresh plain
    transformers model (and export_merged → from_pretrained) gives the adapted model's
    outputs — functional_call(model, merge(params)) — within the dtype's tolerance; the
    reloaded merge is bit-identical to the original's."""
    approx, targets, sharing, dtype, seed = case
    model = awkward_bert(dtype)
    named = dict(model.named_parameters())
    base = {f"{t}.{k}": named[f"{t}.{k}"].detach() for t in targets for k in ("weight", "bias")}
    adapter = ma.Adapter(approx, targets, sharing)
    g = torch.Generator().manual_seed(seed)
    params = {k: (0.1 * torch.randn(v.shape, generator=g, dtype=torch.float64)).to(dtype)
              for k, v in adapter.init(base).items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged = adapter.merge(params, base)
    want = _logits(model, merged)
    with tempfile.TemporaryDirectory() as tmp:
        student = load_student(save_student(f"{tmp}/s", adapter, params), base=base)
        again = student.adapter.merge(student.params, base)
        assert again.keys() == merged.keys() and all(torch.equal(again[k], merged[k]) for k in merged)
        fresh = awkward_bert(dtype)
        tol = TOLERANCE[dtype] * (1 + float(want.abs().max()))
        torch.testing.assert_close(_logits(merged_copy(fresh, again)), want, rtol=0, atol=tol)
        reloaded = type(model).from_pretrained(export_merged(model, again, f"{tmp}/m"), dtype=dtype).eval()
        torch.testing.assert_close(_logits(reloaded), want, rtol=0, atol=tol)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched
