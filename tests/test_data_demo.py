"""moil.harness.data.demo: the assembled pipeline on real digits, real features, real tokenizer."""

from __future__ import annotations

import pytest
import torch

from moil.harness.data.demo import prepare_demo_data
from moil.harness.data.visual_features import EfficientNetLite0Grid


def test_rejects_unknown_dataset_and_bad_limit():
    with pytest.raises(ValueError, match="dataset='cifar10'"):
        prepare_demo_data("cifar10")
    with pytest.raises(ValueError, match="limit=0"):
        prepare_demo_data("digits", limit=0)


@pytest.mark.slow
def test_prepare_demo_data_end_to_end(tmp_path, monkeypatch):
    ex = EfficientNetLite0Grid(resolution=64)  # 2 x 2 grid: fast on CPU
    data = prepare_demo_data("digits", seed=0, extractor=ex, cache_dir=tmp_path, limit=12)
    assert data.name == "digits" and len(data.task.answer_vocab) == 14
    for split in ("train", "val", "test"):
        part = data[split]
        assert part.visual_embeds.shape == (12, 4, 320)
        assert torch.isfinite(part.visual_embeds).all()
    assert len(list(tmp_path.glob("*.safetensors"))) == 3  # one cache file per split
    itm = next(data.train.itm_batches(batch_size=8, generator=0))
    assert itm["itm_labels"].tolist() == [1, 0] * 4
    assert itm["visual_embeds"].shape == (8, 4, 320)
    vqa = next(data.test.vqa_batches(batch_size=5, generator=0))
    assert vqa["vqa_targets"].shape == (5, 14)
    assert torch.equal(vqa["vqa_targets"].argmax(1), vqa["answer_labels"])

    def no_compute(self, images, model=None):
        raise AssertionError("features should come from the cache")

    monkeypatch.setattr(EfficientNetLite0Grid, "__call__", no_compute)
    again = prepare_demo_data("digits", seed=0, extractor=ex, cache_dir=tmp_path, limit=12)
    torch.testing.assert_close(again.val.visual_embeds, data.val.visual_embeds, rtol=0, atol=0)
    assert torch.equal(again.test.images.source_index, data.test.images.source_index)
