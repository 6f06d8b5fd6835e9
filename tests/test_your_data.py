"""Your model, your data: the docs/your-data.md walk-through runs as written; epochs are pure
functions of (seed, epoch); ``train`` cycles a re-iterable epoch by epoch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moil.harness.data.collate import draw_negatives, epoch_plan
from moil.objectives import ImageTextMatching
from moil.optim import AdamW
from moil.recipes import FullFineTune
from moil.train import train

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "your-data.md"


def bash_blocks(text: str) -> list[str]:
    """The ```bash blocks of a markdown file, in order."""
    return re.findall(r"^```bash\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def test_doc_has_the_walkthrough_steps():
    """The doc's commands are the ones the acceptance names, in order."""
    commands = "\n".join(bash_blocks(DOC.read_text()))
    order = ["save_tiny_folder", "metadata.jsonl", "run.toml", "moil train", "moil eval",
             "moil export", "from_pretrained(\"merged\")"]
    positions = [commands.index(s) for s in order]
    assert positions == sorted(positions)


@pytest.mark.slow
def test_walkthrough_runs_and_merged_logits_equal_moils(tmp_path, monkeypatch):
    """Every bash block of docs/your-data.md runs in an empty folder; the merged folder, loaded
    by plain transformers in a process that never imports moil, gives the logits of moil's own
    forward of the trained student."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    outputs = []
    for number, block in enumerate(bash_blocks(DOC.read_text()), start=1):
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], check=False, cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"block {number} failed:\n{block}\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
    text = "\n".join(outputs)
    assert "student/hybrid *" in text and "mean match probability on val:" in text
    scores = json.loads(text[text.index("{"):text.rindex("}") + 1])  # moil eval's JSON
    assert set(scores["student/hybrid"]) == {"val", "test", "stored_parameters"}
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["steps"] == 2 * 32 // 4  # epochs × (32 train rows / 4 images a batch)
    for split in ("val", "test"):
        assert scores["student/hybrid"][split] == pytest.approx(results["candidates"]["student/hybrid"][split])

    # moil's forward of the run's student on the saved inputs
    from moil.harness.build import build_backbone, build_recipe, load_data, run_steps
    from moil.harness.config import load_config
    from moil.train import CHECKPOINT, load_state

    monkeypatch.chdir(tmp_path)
    cfg = load_config(tmp_path / "run" / "config.toml")
    data = load_data(cfg)
    backbone = build_backbone(cfg, "itm", data)
    recipe = build_recipe(cfg.arms[0], "itm", 1e-3, run_steps(cfg, data, "itm"))
    state, _ = load_state(tmp_path / "run" / CHECKPOINT, recipe.init(backbone, seed=0))
    params = recipe.candidates(recipe.finalize(state, backbone), backbone)["student/hybrid"]
    saved = torch.load(tmp_path / "merged-logits.pt")
    torch.manual_seed(0)
    mine = backbone(params, saved["inputs"])["itm_logits"][:, 1]
    torch.testing.assert_close(mine, saved["logits"], rtol=0, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(labels=st.lists(st.integers(0, 3), min_size=2, max_size=40).filter(lambda x: len(set(x)) > 1),
       seed=st.integers(0, 10**6), epoch=st.integers(0, 50))
def test_epoch_plan_is_a_pure_function_with_true_negatives(labels, seed, epoch):
    """Law: epoch_plan(n, seed, epoch, texts) is the same on every call; the order is a
    permutation; every row's negative has a different text."""
    texts = [f"digit {x}" for x in labels]
    order, neg = epoch_plan(len(texts), seed, epoch, texts)
    again, neg2 = epoch_plan(len(texts), seed, epoch, texts)
    assert torch.equal(order, again) and torch.equal(neg, neg2)
    assert sorted(order.tolist()) == list(range(len(texts)))
    assert all(texts[j] != texts[i] for i, j in enumerate(neg.tolist()))


def test_epochs_differ_and_one_text_is_refused():
    """Two epochs of one seed shuffle differently; a single distinct caption has no negative."""
    texts = [f"t{i % 5}" for i in range(64)]
    assert not torch.equal(epoch_plan(64, 0, 0, texts)[0], epoch_plan(64, 0, 1, texts)[0])
    with pytest.raises(ValueError, match="two different texts"):
        draw_negatives(["same"] * 4, torch.Generator().manual_seed(0))


def _batches(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, 99, (4, 7), generator=g),
             "pixel_values": torch.randn(4, 3, 32, 32, generator=g),
             "itm_labels": torch.randint(0, 2, (4,), generator=g)} for _ in range(n)]


class Epochs:
    """A re-iterable that records ``set_epoch`` (as a DistributedSampler would get)."""

    def __init__(self, batches):
        self.batches, self.epochs = batches, []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __iter__(self):
        return iter(self.batches)


def test_train_cycles_a_dataloader_epoch_by_epoch_and_resumes_exactly(tmp_path):
    """A DataLoader (re-iterable) is passed over again instead of running out; 7 steps on 3
    batches equal a step function ``s -> batches[s mod 3]``; stopping at 4 and resuming ends
    bitwise equal; set_epoch(e) is called before pass e."""
    from moil.backbones import vilt

    backbone = vilt.build(vilt.tiny("itm", seed=0))
    data = _batches(3)
    recipe = FullFineTune(ImageTextMatching(), optimizer=AdamW(lr=1e-2))
    loader = torch.utils.data.DataLoader(data, batch_size=None)
    cycled = train(recipe, backbone, loader, steps=7)
    stepped = train(recipe, backbone, lambda s: data[s % 3], steps=7)
    train(recipe, backbone, loader, steps=4, run_dir=tmp_path)
    tracked = Epochs(data)
    resumed = train(recipe, backbone, tracked, steps=7, run_dir=tmp_path, resume=True)
    for k in stepped.teacher:
        assert torch.equal(cycled.teacher[k], stepped.teacher[k])
        assert torch.equal(resumed.teacher[k], stepped.teacher[k])
    assert tracked.epochs == [0, 1, 2]  # steps 4..6 are in passes 1 and 2; pass 0 was skipped through
    with pytest.raises(ValueError, match="yielded nothing"):
        train(recipe, backbone, [], steps=1)
