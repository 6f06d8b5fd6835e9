"""Models the seed paper names that have no transformers class, through the generic path: a
VinVL-like region-feature model from a config (VisualBERT reading region features plus box
positions) and a VLMO-like block (shared attention, per-modality FFN experts) in Python; each
trained, merged, exported and reloaded with identical logits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from moil.harness.cli import app
from moil.harness.data import DIGIT_NAMES, load_digits_5k
from moil.testing.folders import save_tiny_folder

datasets = pytest.importorskip("datasets")
WORDS = ["a", "photo", "of", "the", "digit", *DIGIT_NAMES]


def regions(image: np.ndarray) -> tuple[list, list]:
    """Four quadrant "regions" of a 28×28 digit: 4×4 mean-pooled pixels (16 dims) and their boxes."""
    feats, boxes = [], []
    for y in (0, 14):
        for x in (0, 14):
            crop = image[y:y + 14, x:x + 14].astype(np.float32) / 255
            feats.append(crop[:12, :12].reshape(4, 3, 4, 3).mean(axis=(1, 3)).ravel().tolist())
            boxes.append([x / 28, y / 28, (x + 14) / 28, (y + 14) / 28])
    return feats, boxes


def region_split(folder: Path, split: str, count: int) -> Path:
    """A save_to_disk data set: caption, region features (4, 16), boxes (4, 4) — no images."""
    digits = load_digits_5k(seed=0)[split]
    rows = {"text": [], "regions": [], "boxes": []}
    for i in range(count):
        f, b = regions(digits.images[i].numpy())
        rows["text"].append(f"a photo of the digit {DIGIT_NAMES[int(digits.labels[i])]}")
        rows["regions"].append(f)
        rows["boxes"].append(b)
    datasets.Dataset.from_dict(rows).save_to_disk(str(folder))
    return folder


VINVL = """[model]
pretrained = "{folder}"
family = "generic"
model_class = "VisualBertForVisualReasoning"
targets = ["attention.self.query", "attention.self.value", "intermediate.dense"]
heads = ["cls", "visual_bert.pooler", "visual_bert.embeddings.visual_projection"]
[data]
train = "{train}"
val = "{val}"
batch_size = 4
[data.columns]
image = "regions"
features = "regions"
boxes = "boxes"
[train]
steps = 3
seeds = [0]
tasks = ["itm"]
eval_splits = ["val"]
[[arms]]
lr = 1e-3
momentum = 0.5
"""


def test_vinvl_like_region_model_from_a_config(tmp_path):
    """VisualBERT over region features ++ [x1, y1, x2, y2, w, h] (width 16 + 6), adapted by patterns
    from a config: train, export merged, reload with transformers: logits equal moil's student."""
    from transformers import VisualBertForVisualReasoning

    save_tiny_folder("visualbert", tmp_path / "vinvl", WORDS, visual_embedding_dim=22)
    train, val = region_split(tmp_path / "train", "train", 8), region_split(tmp_path / "val", "val", 4)
    (tmp_path / "run.toml").write_text(VINVL.format(folder=tmp_path / "vinvl", train=train, val=val))
    runner = CliRunner()
    for args in (["train", "--config", tmp_path / "run.toml", "--out", tmp_path / "run"],
                 ["export", "--run", tmp_path / "run", "-f", "merged", "--out", tmp_path / "merged"]):
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "results.json").read_text())["steps"] == 3

    from moil.harness.cli import _restore

    _, _, _, recipe, state, backbone, disk = _restore(tmp_path / "run")
    assert any(".intermediate.dense" in t for t in backbone.targets)
    batch = disk.eval_batches("val", "itm", 4, torch.device("cpu"))[0]
    assert batch["visual_embeds"].shape == (4, 4, 22)
    torch.testing.assert_close(batch["visual_embeds"][0, 1, 16:], torch.tensor([0.5, 0, 1, 0.5, 0.5, 0.5]))
    ours = backbone(recipe.candidates(state, backbone)["student/hybrid"], batch)["itm_logits"]
    merged = VisualBertForVisualReasoning.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        theirs = merged(**backbone.inputs(batch)).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert not torch.allclose(ours, backbone({}, batch)["itm_logits"])


def test_vlmo_like_block_through_from_model(tmp_path):
    """A VLMO-like model: from_model with patterns (shared q/k/v/out and both experts' first
    linear), MoIL training, merged export; a fresh process without moil reloads it with equal logits."""
    from moil.approx import Hybrid
    from moil.backbones import Logits, from_model
    from moil.export import export_merged
    from moil.objectives import ImageTextMatching
    from moil.optim import AdamW
    from moil.recipes import MoIL, Student
    from moil.train import train

    sys.path.insert(0, str(Path(__file__).parent))
    from vlmo_block import VLMOConfig, VLMOForITM

    torch.manual_seed(0)
    model = VLMOForITM(VLMOConfig()).eval()
    backbone = from_model(model, r"blocks\.\d+\.(query|key|value|out|text_ffn\.0|image_ffn\.0)", ["itm_head"],
                          outputs=Logits("itm_logits"))
    assert len(backbone.targets) == 12 and backbone.sharing is not None  # q/k/v of a block share
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 64, (4, 5), generator=g), "pixel_values": torch.randn(4, 3, 16, 16, generator=g),
                "itm_labels": torch.tensor([1, 0, 1, 0])} for _ in range(3)]
    recipe = MoIL(ImageTextMatching(), {"hybrid": Student(Hybrid(4))}, momentum=0.5, optimizer=AdamW(lr=1e-2))
    state = train(recipe, backbone, lambda s: batches[s % 3], steps=4)
    params = recipe.candidates(recipe.finalize(state, backbone), backbone)["student/hybrid"]
    export_merged(model, backbone.to_model_names(params), tmp_path / "merged")
    ours = backbone(params, batches[0])["itm_logits"]
    assert not torch.allclose(ours, backbone({}, batches[0])["itm_logits"])
    torch.save({"inputs": {k: v for k, v in batches[0].items() if k != "itm_labels"}}, tmp_path / "inputs.pt")
    script = (
        "import sys, torch; sys.path.insert(0, sys.argv[1]); from vlmo_block import VLMOForITM\n"
        "m = VLMOForITM.from_pretrained(sys.argv[2]).eval(); x = torch.load(sys.argv[3])['inputs']\n"
        "with torch.no_grad(): torch.save(m(**x).logits, sys.argv[4])\n"
        "assert not any(n.split('.')[0] == 'moil' for n in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent), str(tmp_path / "merged"),
                    str(tmp_path / "inputs.pt"), str(tmp_path / "logits.pt")], check=True, timeout=120)
    torch.testing.assert_close(ours, torch.load(tmp_path / "logits.pt"), rtol=0, atol=1e-5)
