"""Models from a save_pretrained folder and data from disk, through the `moil` command: each
family × task runs train → eval → export merged; the merged folder loads with transformers and
gives moil's logits; bad folders, columns, images and tasks get named errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from moil.harness.cli import app
from moil.harness.config import ConfigError, loads_config
from moil.harness.data import DIGIT_NAMES, load_digits_5k
from moil.harness.pretrained import family_of, load_backbone
from moil.testing.folders import save_tiny_folder

datasets = pytest.importorskip("datasets")
WORDS = ["a", "photo", "of", "the", "digit", "what", "is", "this", "?", *DIGIT_NAMES]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def write_image_folder(folder: Path, split: str, count: int, kind: str = "caption") -> Path:
    """PNG digits plus metadata.jsonl: a caption per image, or a question with 3 answers."""
    digits = load_digits_5k(seed=0)[split]
    from PIL import Image

    folder.mkdir(parents=True)
    with open(folder / "metadata.jsonl", "w") as rows:
        for i in range(count):
            Image.fromarray(digits.images[i].numpy()).save(folder / f"{i}.png")
            name = DIGIT_NAMES[int(digits.labels[i])]
            row = {"text": f"a photo of the digit {name}"} if kind == "caption" else {
                "question": "what digit is this ?", "answers": [name, name, DIGIT_NAMES[(i + 1) % 10]]}
            rows.write(json.dumps({"file_name": f"{i}.png", **row}) + "\n")
    return folder


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("yours")
    for family in ("vilt", "clip", "bridgetower"):
        save_tiny_folder(family, root / family, WORDS)
    for split, count in (("train", 16), ("val", 8)):
        write_image_folder(root / "captions" / split, split, count)
        write_image_folder(root / "questions" / split, split, count, kind="vqa")
    return root


def config(work: Path, family: str, task: str, data: str = "captions", extra: str = "") -> str:
    return (
        f'[model]\npretrained = "{work / family}"\nfamily = "auto"\n'
        f'[data]\ntrain = "{work / data / "train"}"\nval = "{work / data / "val"}"\nbatch_size = 8\n{extra}'
        f'[train]\nsteps = 2\nseeds = [0]\ntasks = ["{task}"]\neval_splits = ["val"]\n'
        '[[arms]]\nname = "moil"\nlr = 1e-3\nmomentum = 0.5\n'
    )


@pytest.mark.parametrize("family, task, cls, metric", [
    ("vilt", "itm", "ViltForImageAndTextRetrieval", "accuracy"),
    ("vilt", "vqa", "ViltForQuestionAnswering", "vqa_score"),
    ("clip", "retrieval", "CLIPModel", "mean_recall"),
    ("bridgetower", "itm", "BridgeTowerForImageAndTextRetrieval", "accuracy"),
])
def test_family_task_trains_evaluates_and_exports(work, tmp_path, family, task, cls, metric):
    """`moil train` on a folder + image folder, then `moil eval` reproduces the scores and the
    merged export loads with the transformers task class, giving moil's student logits."""
    import transformers

    data = "questions" if task == "vqa" else "captions"
    (tmp_path / "run.toml").write_text(config(work, family, task, data))
    result = invoke("train", "--config", tmp_path / "run.toml", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    trained = json.loads((tmp_path / "run" / "results.json").read_text())
    assert trained["metric"] == metric and trained["steps"] == 2
    result = invoke("eval", "--run", tmp_path / "run")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["student/hybrid"]["val"] == pytest.approx(trained["candidates"]["student/hybrid"]["val"])
    if task == "retrieval":
        assert set(scores["student/hybrid"]["val"]) == {
            "t2i@1", "t2i@5", "t2i@10", "i2t@1", "i2t@5", "i2t@10", "mean_recall"}
    result = invoke("export", "--run", tmp_path / "run", "--format", "merged", "--out", tmp_path / "merged")
    assert result.exit_code == 0, result.output
    model = getattr(transformers, cls).from_pretrained(tmp_path / "merged").eval()
    processor = transformers.AutoProcessor.from_pretrained(tmp_path / "merged")

    from moil.harness.cli import _restore

    _, _, _, recipe, state, backbone, disk = _restore(tmp_path / "run")
    params = recipe.candidates(state, backbone)["student/hybrid"]
    batch = disk.eval_batches("val", task, 8, torch.device("cpu"))[0]
    torch.manual_seed(0)
    ours = backbone(params, batch)
    torch.manual_seed(0)
    with torch.no_grad():
        theirs = model(**backbone.inputs(batch))
    key = {"itm": "itm_logits", "vqa": "vqa_logits", "retrieval": "image_embeds"}[task]
    ref = theirs.image_embeds if task == "retrieval" else theirs.logits
    got = ours[key][:, 1:] if (family, task) == ("vilt", "itm") else ours[key]
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    assert type(processor).__name__.lower().startswith(family)


def test_family_auto_reads_model_type(work):
    """family = 'auto' is config.model_type; an explicit family is taken as given."""
    for family in ("vilt", "clip", "bridgetower"):
        spec = loads_config(config(work, family, "itm" if family != "clip" else "retrieval")).model
        assert family_of(spec) == family
    explicit = loads_config(config(work, "clip", "retrieval").replace('"auto"', '"clip"')).model
    assert family_of(explicit) == "clip"


def test_a_task_the_family_lacks_and_a_missing_folder_are_named(work, tmp_path):
    spec = loads_config(config(work, "clip", "itm")).model
    with pytest.raises(ConfigError, match=r"family 'clip' has no 'itm' task; it runs \['retrieval'\]"):
        load_backbone(spec, "itm")
    (tmp_path / "run.toml").write_text(config(work, "clip", "itm").replace(str(work / "clip"), str(tmp_path / "nope")))
    result = invoke("train", "--config", tmp_path / "run.toml", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "no such folder" in result.output and "model.pretrained" in result.output
    assert not (tmp_path / "run").exists()  # refused before the run folder was touched


def test_missing_column_names_column_file_columns_and_field(work, tmp_path):
    """A dataset without the configured text column: the error names the column, the split's
    path, the columns it has and the [data.columns] field — and nothing in --out is lost."""
    (tmp_path / "run.toml").write_text(config(work, "vilt", "itm", extra='[data.columns]\ntext = "caption"\n'))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("keep me")
    result = invoke("train", "--config", tmp_path / "run.toml", "--out", tmp_path / "run")
    out = " ".join(result.output.split())
    assert result.exit_code == 2, out
    assert "no column 'caption'" in out and str(work / "captions" / "train") in out
    assert "['image', 'text']" in out and "[data.columns] text" in out
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["notes.txt"]


def test_an_image_that_fails_to_decode_is_named(work, tmp_path):
    bad = write_image_folder(tmp_path / "bad", "train", 8)
    (bad / "3.png").write_bytes(b"not a png")
    text = config(work, "vilt", "itm").replace(str(work / "captions" / "train"), str(bad))
    (tmp_path / "run.toml").write_text(text)
    result = invoke("train", "--config", tmp_path / "run.toml", "--out", tmp_path / "run")
    assert result.exit_code != 0
    message = str(result.exception) + result.output
    assert "3.png" in message and "failed to decode" in message


def test_save_to_disk_folder_with_renamed_columns(work, tmp_path):
    """A load_from_disk folder with its own column names (picture, caption) trains by epochs."""
    rows = datasets.load_dataset("imagefolder", data_dir=str(work / "captions" / "train"), split="train")
    rows.rename_columns({"image": "picture", "text": "caption"}).save_to_disk(str(tmp_path / "saved"))
    extra = 'epochs = 2\n[data.columns]\nimage = "picture"\ntext = "caption"\n'
    text = config(work, "vilt", "itm", extra=extra).replace(str(work / "captions" / "train"), str(tmp_path / "saved"))
    text = text.replace(str(work / "captions" / "val"), str(tmp_path / "saved"))
    (tmp_path / "run.toml").write_text(text)
    result = invoke("train", "--config", tmp_path / "run.toml", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "results.json").read_text())["steps"] == 2 * 16 // 4


def test_jsonl_of_paths_and_metadata_csv_read_the_same_rows(work, tmp_path):
    """A .jsonl of image paths (relative to the file) and an image folder with metadata.csv
    give the rows and decoded images an image folder with metadata.jsonl gives."""
    from moil.harness.data.disk import decode_image, read_split

    folder = work / "captions" / "val"
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    listing = tmp_path / "pairs.jsonl"
    listing.write_text("".join(json.dumps({"image": f"{folder.name}/{r['file_name']}", "text": r["text"]}) + "\n"
                               for r in rows))
    (tmp_path / folder.name).symlink_to(folder)
    csv_folder = tmp_path / "csv"
    csv_folder.mkdir()
    lines = ["file_name,text"]
    for r in rows:
        (csv_folder / r["file_name"]).write_bytes((folder / r["file_name"]).read_bytes())
        lines.append(f"{r['file_name']},{r['text']}")
    (csv_folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    reference = read_split(str(folder), "data.val", "image")
    for path in (listing, csv_folder):
        got = read_split(str(path), "data.val", "image")
        assert got["text"] == reference["text"]
        for a, b in zip(got["image"][:3], reference["image"][:3]):
            assert decode_image(a, str(path)).tobytes() == decode_image(b, str(folder)).tobytes()


def test_vqa_vocabulary_from_train_with_soft_scores():
    """Answers are ranked by frequency in train; a list scores min(1, count/3), a string 1;
    answers outside the vocabulary score 0."""
    from moil.harness.data.collate import answer_vocab, soft_scores

    cells = [["two", "two", "three"], "two", ["one"] * 4]
    assert answer_vocab(cells) == ("two", "one", "three")
    assert soft_scores(["two", "two", "three"]) == {"two": 2 / 3, "three": 1 / 3}
    assert soft_scores("seven") == {"seven": 1.0} and soft_scores(["one"] * 4) == {"one": 1.0}


def test_disk_stream_step_is_a_pure_function_of_seed_and_step(work):
    """Law (what makes --resume exact): batch s of a fresh stream equals batch s of a stream
    that already served 0..s-1, across epoch boundaries; each epoch pairs every train row once."""
    from moil.harness.build import load_data

    cfg = loads_config(config(work, "vilt", "itm"))
    data = load_data(cfg)
    assert data.steps_per_epoch("itm", 8) == 4  # 16 rows, 4 images a batch
    used = data.train_stream("itm", 8, 3, torch.device("cpu"))
    served = [used(s) for s in range(6)]
    for s in (0, 3, 4, 5):
        fresh = data.train_stream("itm", 8, 3, torch.device("cpu"))(s)
        assert fresh.keys() == served[s].keys()
        assert all(torch.equal(fresh[k], served[s][k]) for k in fresh)
    assert not torch.equal(served[0]["pixel_values"], served[4]["pixel_values"])  # epoch 1 reshuffled
    assert all(torch.equal(b["itm_labels"], torch.tensor([1, 0] * 4)) for b in served)


def test_family_auto_reads_a_visualbert_folder(tmp_path):
    """family = 'auto' on a VisualBERT folder (model_type visual_bert) is the visualbert family."""
    from moil.backbones import visualbert

    visualbert.tiny("vqa").save_pretrained(tmp_path / "vb")
    spec = loads_config(f'[model]\npretrained = "{tmp_path / "vb"}"\nfamily = "auto"\n[data]\ntrain = "x"\n').model
    assert family_of(spec) == "visualbert"


def test_a_slash_less_name_that_is_no_folder_is_refused_at_once_without_the_network(work, tmp_path):
    """``pretrained = "mymodel"`` (a mistyped folder, or a hub id not in the local cache) is
    refused when the config loads — runs are offline — instead of retrying downloads."""
    (tmp_path / "run.toml").write_text(config(work, "clip", "retrieval").replace(str(work / "clip"), "no-such-model-here"))
    result = invoke("train", "--config", tmp_path / "run.toml", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "'no-such-model-here': no such folder" in result.output
    assert "local cache" in result.output  # said before any download was tried
    assert not (tmp_path / "run").exists()
