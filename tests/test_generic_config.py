"""Configs beyond the built-in families: ``family = "generic"`` (a transformers class plus
patterns), VisualBERT (visual features from a column or the EfficientNet grid) and NLVR2 pairs,
each through `moil train` → `moil eval` → `moil export -f merged` → plain transformers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from moil.harness.cli import app
from moil.harness.config import ConfigError, loads_config
from moil.harness.data import DIGIT_NAMES, load_digits_5k
from moil.testing.folders import save_tiny_folder

datasets = pytest.importorskip("datasets")
WORDS = ["a", "photo", "of", "the", "digit", "left", "is", "more", "than", "right", *DIGIT_NAMES]
runner = CliRunner()
GENERIC = (
    'family = "generic"\nmodel_class = "BlipForImageTextRetrieval"\n'
    'targets = ["attention.self.query", "attention.self.value"]\nheads = ["itm_head"]\n'
    'outputs = {itm_logits = "itm_score"}\n'
)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _png(image, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image.numpy()).save(path)


def write_split(folder: Path, split: str, count: int, kind: str) -> Path:
    """PNG digits and metadata.jsonl: captions (+ a features column), or NLVR2 pairs."""
    digits = load_digits_5k(seed=0)[split]
    folder.mkdir(parents=True)
    g = np.random.default_rng(0)
    with open(folder / "metadata.jsonl", "w") as rows:
        for i in range(count):
            name = DIGIT_NAMES[int(digits.labels[i])]
            if kind == "pairs":
                j = (i + 1) % count
                _png(digits.images[i], folder / f"{i}a.png")
                _png(digits.images[j], folder / f"{i}b.png")
                row = {"left_file_name": f"{i}a.png", "right_file_name": f"{i}b.png",
                       "text": "the left digit is more than the right",
                       "label": bool(digits.labels[i] > digits.labels[j])}
            else:
                _png(digits.images[i], folder / f"{i}.png")
                np.save(folder / f"{i}.npy", g.standard_normal((3, 8)).astype(np.float32))
                row = {"file_name": f"{i}.png", "text": f"a photo of the digit {name}", "feats": f"{i}.npy",
                       "question": "what digit is this", "answers": [name, name, DIGIT_NAMES[(i + 1) % 10]]}
            rows.write(json.dumps(row) + "\n")
    return folder


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("generic")
    save_tiny_folder("blip", root / "blip", WORDS)
    save_tiny_folder("visualbert", root / "vb8", WORDS, visual_embedding_dim=8)
    save_tiny_folder("visualbert", root / "vb320", WORDS, visual_embedding_dim=320)
    save_tiny_folder("visualbert", root / "vbpair", WORDS, task="nlvr2", visual_embedding_dim=320)
    save_tiny_folder("vilt", root / "viltpair", WORDS, task="nlvr2")
    save_tiny_folder("vilt", root / "viltvqa", WORDS, task="vqa")
    save_tiny_folder("visualbert", root / "vb8vqa", WORDS, task="vqa", visual_embedding_dim=8)
    for split, count in (("train", 8), ("val", 4)):
        write_split(root / "captions" / split, split, count, "captions")
        write_split(root / "pairs" / split, split, count, "pairs")
    return root


def config(work: Path, folder: str, task: str, model: str = 'family = "auto"\n', data: str = "captions",
           extra: str = "") -> str:
    return (
        f'[model]\npretrained = "{work / folder}"\n{model}'
        f'[data]\ntrain = "{work / data / "train"}"\nval = "{work / data / "val"}"\nbatch_size = 4\n{extra}'
        f'[train]\nsteps = 2\nseeds = [0]\ntasks = ["{task}"]\neval_splits = ["val"]\n'
        '[[arms]]\nname = "moil"\nlr = 1e-3\nmomentum = 0.5\n'
    )


CASES = {
    "generic-blip-itm": ("blip", "itm", GENERIC, "captions", "", "BlipForImageTextRetrieval", "itm_logits"),
    "visualbert-itm-column": ("vb8", "itm", 'family = "auto"\n', "captions", '[data.columns]\nfeatures = "feats"\n',
                              "VisualBertForVisualReasoning", "itm_logits"),
    "visualbert-itm-grid": ("vb320", "itm", 'family = "visualbert"\n', "captions", "",
                            "VisualBertForVisualReasoning", "itm_logits"),
    "generic-vilt-vqa": ("viltvqa", "vqa", ('family = "generic"\nmodel_class = "ViltForQuestionAnswering"\n'
                         'targets = ["attention.query", "attention.value"]\nheads = ["classifier"]\n'), "captions", "",
                         "ViltForQuestionAnswering", "vqa_logits"),
    "visualbert-vqa-column": ("vb8vqa", "vqa", 'family = "auto"\n', "captions", '[data.columns]\nfeatures = "feats"\n',
                              "VisualBertForQuestionAnswering", "vqa_logits"),
    "vilt-nlvr2": ("viltpair", "nlvr2", 'family = "auto"\n', "pairs", "", "ViltForImagesAndTextClassification",
                   "pair_logits"),
    "visualbert-nlvr2-grid": ("vbpair", "nlvr2", 'family = "auto"\n', "pairs", "",
                              "VisualBertForVisualReasoning", "pair_logits"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_config_trains_evaluates_exports_and_reloads(work, tmp_path, case):
    """`moil train` / `moil eval` / `moil export -f merged`; the merged folder loads with the
    transformers class and its logits equal moil's forward of the trained student."""
    import transformers

    folder, task, model, data, extra, cls, key = CASES[case]
    (tmp_path / "run.toml").write_text(config(work, folder, task, model, data, extra))
    result = invoke("train", "--config", tmp_path / "run.toml", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    trained = json.loads((tmp_path / "run" / "results.json").read_text())
    assert trained["steps"] == 2 and trained["metric"] == ("vqa_score" if task == "vqa" else "accuracy")
    result = invoke("eval", "--run", tmp_path / "run")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["student/hybrid"]["val"] == pytest.approx(trained["candidates"]["student/hybrid"]["val"])
    result = invoke("export", "--run", tmp_path / "run", "--format", "merged", "--out", tmp_path / "merged")
    assert result.exit_code == 0, result.output
    merged = getattr(transformers, cls).from_pretrained(tmp_path / "merged").eval()
    transformers.AutoTokenizer.from_pretrained(tmp_path / "merged")  # the processor travels with it

    from moil.harness.cli import _restore

    _, _, _, recipe, state, backbone, disk = _restore(tmp_path / "run")
    params = recipe.candidates(state, backbone)["student/hybrid"]
    batch = disk.eval_batches("val", task, 4, torch.device("cpu"))[0]
    base = backbone({}, batch)[key]
    torch.manual_seed(0)
    ours = backbone(params, batch)[key]
    torch.manual_seed(0)
    with torch.no_grad():
        out = merged(**backbone.inputs(batch))
    theirs = out.itm_score if cls.startswith("Blip") else out.logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert not torch.allclose(ours, base)  # the student changed the model


def test_generic_fields_are_checked_at_entry(work, tmp_path):
    """Each new [model] field: a bad value is named with the fix, before the run folder exists."""
    bad = {
        'family = "generic"\ntargets = ["query"]\n': "model_class = None: family = 'generic' needs",
        'family = "generic"\nmodel_class = "Blip"\n': "targets = []: family = 'generic' has no default",
        'family = "auto"\nmodel_class = "X"\n': "model_class = 'X' is read only by family = 'generic'",
        GENERIC.replace("itm_logits", "itm_score"): "'itm_score' = 'itm_score' is not a moil output key",
    }
    for model, message in bad.items():
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
            loads_config(config(work, "blip", "itm", model))
    late = {
        GENERIC.replace("BlipForImageTextRetrieval", "NoSuchModel"): "model.model_class = 'NoSuchModel' is not",
        GENERIC.replace("itm_head", "no_head"): "targets/heads of BlipForImageTextRetrieval",
        GENERIC.replace("itm_logits", "vqa_logits"): "lacks 'itm_logits', the key task 'itm' reads",
        GENERIC.replace('"itm_score"', '"nope"'): "the model's output has no 'nope'",
        GENERIC.replace('"itm_score"', '"last_hidden_state"'): "itm_logits must be (batch, 2) logits",
    }
    for model, message in late.items():
        (tmp_path / "run.toml").write_text(config(work, "blip", "itm", model))
        result = invoke("train", "--config", tmp_path / "run.toml", "--out", tmp_path / "run")
        text = " ".join(result.output.split())
        assert result.exit_code == 2 and message in text, text
        assert not (tmp_path / "run").exists()


def test_nlvr2_missing_pair_column_and_a_family_without_nlvr2(work, tmp_path):
    extra = '[data.columns]\npair = ["left", "middle"]\n'
    (tmp_path / "run.toml").write_text(config(work, "viltpair", "nlvr2", data="pairs", extra=extra))
    result = invoke("train", "--config", tmp_path / "run.toml", "--out", tmp_path / "run")
    out = " ".join(result.output.split())
    assert result.exit_code == 2 and "no column 'middle' (the pair[1])" in out, out
    assert not (tmp_path / "run").exists()
    (tmp_path / "run.toml").write_text(config(work, "vbpair", "nlvr2", data="pairs",
                                              extra='[data.columns]\nfeatures = "feats"\n'))
    result = invoke("train", "--config", tmp_path / "run.toml", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "NLVR2 reads the two images" in result.output, result.output
    save_tiny_folder("clip", tmp_path / "clip", WORDS)
    (tmp_path / "run.toml").write_text(config(tmp_path, "clip", "nlvr2", data="x").replace(
        str(tmp_path / "x"), str(work / "pairs")))
    result = invoke("train", "--config", tmp_path / "run.toml", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "family 'clip' has no 'nlvr2' task" in result.output


def test_visualbert_grid_width_mismatch_is_named(work):
    from moil.harness.pretrained import load_processor

    spec = loads_config(config(work, "vb8", "itm")).model
    with pytest.raises(ConfigError, match="reads visual_embeds of width 8, but the EfficientNet-Lite0 grid gives 320"):
        load_processor(spec)


def test_the_docs_toml_blocks_are_valid_configs():
    """Every ```toml block of docs/your-data.md parses as a config (fields, types, rules)."""
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "your-data.md").read_text()
    blocks = re.findall(r"^```toml\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 3
    for block in blocks:
        loads_config(block, "docs/your-data.md")


@settings(max_examples=25, deadline=None)
@given(tokens=st.integers(1, 6), dim=st.integers(1, 5), seed=st.integers(0, 1000))
def test_with_boxes_appends_corners_width_and_height(tokens, dim, seed):
    """Law: with_boxes(F, B) = [F | B | x2 - x1 | y2 - y1] row by row; F is unchanged."""
    from moil.harness.data.visual_inputs import with_boxes

    g = np.random.default_rng(seed)
    feats = torch.as_tensor(g.standard_normal((tokens, dim)), dtype=torch.float32)
    lo = g.uniform(0, 0.5, (tokens, 2))
    boxes = np.concatenate([lo, lo + g.uniform(0, 0.5, (tokens, 2))], axis=1).astype(np.float32)
    out = with_boxes(feats, boxes.tolist(), "t")
    assert out.shape == (tokens, dim + 6) and torch.equal(out[:, :dim], feats)
    b = torch.as_tensor(boxes)
    torch.testing.assert_close(out[:, dim:], torch.cat([b, b[:, 2:3] - b[:, :1], b[:, 3:] - b[:, 1:2]], 1))
    with pytest.raises(ConfigError, match="boxes must be \\(tokens, 4\\)"):
        with_boxes(feats, boxes[:, :3].tolist(), "t")
