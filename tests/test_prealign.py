"""moil.harness.prealign: the digit-pairs benchmark's shared, cached pre-aligned start."""

from __future__ import annotations

import pytest
import torch

from moil.harness.config import ConfigError, parse_config


def _config(dataset: str = "digit-pairs", family: str = "minilm-efficientnet", steps: int = 2) -> dict:
    return {"data": {"dataset": dataset, "limit": 20, "batch_size": 8},
            "model": {"family": family, "prealign": {"steps": steps, "batch_size": 8}},
            "train": {"steps": 2, "seeds": [0], "tasks": ["vqa"], "threads": 1},
            "arms": [{"name": "head", "recipe": "head", "lr": 1e-3}]}


@pytest.mark.parametrize(("dataset", "family"), [("digits", "minilm-efficientnet"), ("digit-pairs", "tiny")])
def test_prealign_outside_the_pairs_benchmark_is_refused_with_the_fix(dataset, family):
    with pytest.raises(ConfigError, match=r"model.prealign.steps = 2.*set data.dataset = 'digit-pairs'.*steps = 0"):
        parse_config(_config(dataset, family))


def test_prealign_fields_are_validated_where_they_enter():
    raw = _config()
    raw["model"]["prealign"]["lr"] = -1.0
    with pytest.raises(ConfigError, match=r"prealign.*lr"):
        parse_config(raw)


@pytest.mark.slow
def test_the_stage_trains_caches_and_starts_every_task_with_only_its_head_new(tmp_path, monkeypatch):
    """Laws: (1) the stored ``visual_bert`` weights are the loaded model's, exactly, for every task;
    (2) a second call reads the cache (training is never run again) and gives identical weights;
    (3) only the task head is new — the projection is pretrained now; (4) the frozen word
    embeddings are MiniLM's, while the projection moved from its seeded initialisation."""
    import moil.harness.prealign as pa
    from moil.backbones import visualbert
    from moil.harness.config import PrealignSpec
    from moil.harness.data.text import minilm_path

    spec = PrealignSpec(steps=3, batch_size=8)
    model, new, metrics = pa.prealigned_model(spec, "vqa", 19, limit=20, cache_dir=tmp_path)
    assert new == ["cls.weight", "cls.bias"]
    assert set(metrics) == set(pa.ALIGN_METRICS) and 0.0 <= metrics["val_itm_accuracy"] <= 1.0
    monkeypatch.setattr(pa, "prealign", lambda *a, **k: pytest.fail("the cached stage was trained again"))
    again, new2, metrics2 = pa.prealigned_model(spec, "nlvr2", None, limit=20, cache_dir=tmp_path)
    assert new2 == ["cls.weight", "cls.bias"] and metrics2 == metrics
    a, b = model.visual_bert.state_dict(), again.visual_bert.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fresh, _ = visualbert.from_bert(minilm_path(), 320, task="vqa", num_answers=19, seed=spec.seed)
    f = fresh.visual_bert.state_dict()
    key = "embeddings.word_embeddings.weight"
    assert torch.equal(a[key], f[key])
    proj = "embeddings.visual_projection.weight"
    assert not torch.equal(a[proj], f[proj])


@pytest.mark.slow
def test_a_pair_run_from_the_prealigned_start_trains_no_projection(tmp_path, monkeypatch):
    monkeypatch.setenv("MOIL_CACHE", str(tmp_path / "cache"))
    from moil.harness.build import build_backbone, load_data

    config = parse_config(_config())
    backbone = build_backbone(config, "vqa", load_data(config))
    assert sorted(backbone.head_params()) == ["cls.bias", "cls.weight"]
    assert not any("visual_projection" in k for k in backbone.target_keys())


@pytest.mark.slow
def test_the_stage_runs_at_the_fixed_thread_count_whatever_the_callers(tmp_path, monkeypatch):
    """Law: every forward of the stage runs at ``CACHED_THREADS`` intra-op threads, and the caller's
    count is back afterwards; so the cached start every arm reads does not depend on how many
    threads the run that computed it used (400 steps turn last-bit differences into another start)."""
    import moil.harness.prealign as pa
    from moil.harness.config import PrealignSpec
    from moil.harness.threads import CACHED_THREADS, intra_op_threads

    seen = []
    logits = pa._logits
    monkeypatch.setattr(pa, "_logits", lambda model, batch: seen.append(torch.get_num_threads()) or logits(model, batch))
    caller = CACHED_THREADS + 1
    with intra_op_threads(caller):
        pa.prealigned_model(PrealignSpec(steps=2, batch_size=8), "nlvr2", None, limit=20, cache_dir=tmp_path)
        assert torch.get_num_threads() == caller
    assert seen and set(seen) == {CACHED_THREADS}
