"""The catalogue of bad inputs: every bad value is refused where it enters, with a message
that names the field (or file), the bad value and the fix — through the config, the Python
constructors, the backbone and the CLI. A refused CLI call leaves the run folder as it was.

Law checked by every case: ``refuse(bad) raises E`` and ``all(fragment in str(error))`` for
the case's fragments (field/path, bad value, fix); for the CLI also
``snapshot(folder) before == snapshot(folder) after`` (file names and bytes), and a fresh
``-o`` folder is not created.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from moil.approx import Hybrid, LowRank, Transform
from moil.backbones.checks import check_inputs
from moil.harness.batches import train_stream
from moil.harness.build import build_backbone, check_ranks, load_data, parse_momentum
from moil.harness.cli import app
from moil.harness.config import ConfigError, loads_config
from moil.momentum import MomentumTarget
from moil.optim import AdamW
from moil.recipes import Student
from moil.schedules import Constant, CosineRamp, HalfLife, LinearWarmup, WarmupLinearDecay
from moil.solvers import SVDFit

TINY = '[data]\nlimit = 40\nbatch_size = 8\n[model]\nfamily = "tiny"\n[train]\nsteps = 2\nseeds = [0]\ntasks = ["itm"]\n'
LORA = TINY + '[[arms]]\nname = "lora"\nrecipe = "lora"\nrank = 2\nlr = 1e-3\n'


def arm(text: str) -> str:
    """A tiny config whose one arm carries ``text``."""
    return TINY + "[[arms]]\n" + text + "\n"


def student(text: str) -> str:
    """A tiny config whose one moil arm has one student carrying ``text``."""
    return TINY + '[[arms]]\nname = "moil"\n[[arms.students]]\n' + text + "\n"


# -- 1. config values (TOML → ConfigError naming the path) ----------------------------
CONFIG_CASES = [
    ("lr-inf", arm("lr = inf"), ["$.arms[0].lr", "lr=inf", "e.g. lr ="]),
    ("lr-nan", arm("lr = nan"), ["$.arms[0].lr", "lr=nan", "e.g. lr ="]),
    ("lr-negative", arm("lr = -1e-3"), ["$.arms[0].lr", "lr=-0.001", "> 0"]),
    ("lr-sweep-inf", arm("lr = [1e-3, inf]"), ["$.arms[0].lr", "lr=inf", "e.g. lr ="]),
    ("lr-table-inf", arm("lr = {itm = inf}"), ["$.arms[0].lr", "lr=inf", "e.g. lr ="]),
    ("head-lr-scale-inf", arm("head_lr_scale = inf"), ["$.arms[0].head_lr_scale", "=inf", "e.g. head_lr_scale"]),
    ("weight-decay-negative", arm("weight_decay = -1"), ["$.arms[0].weight_decay", "=-1.0", "0 turns it off"]),
    ("weight-decay-nan", arm("weight_decay = nan"), ["$.arms[0].weight_decay", "=nan", "e.g. weight_decay"]),
    ("warmup-negative", arm("warmup = -1"), ["$.arms[0].warmup", "warmup=-1.0", "e.g. warmup = 0.1"]),
    ("warmup-one", arm("warmup = 1.0"), ["$.arms[0].warmup", "warmup=1.0", "[0, 1)"]),
    ("momentum-above-one", arm("momentum = 1.5"), ["$.arms[0].momentum", "1.5", "[0, 1]"]),
    ("momentum-negative", arm("momentum = -0.1"), ["$.arms[0].momentum", "-0.1", "0.99 for a momentum"]),
    ("momentum-half-life-abc", arm('momentum = "half-life:abc"'), ["$.arms[0].momentum", "'abc'", "'half-life:20'"]),
    ("momentum-unknown-form", arm('momentum = "fast"'), ["$.arms[0].momentum", "'fast'", "'half-life:20'"]),
    ("momentum-half-life-short", arm('momentum = "half-life:0.5"'), ["$.arms[0].momentum", "0.5", ">= 1"]),
    ("momentum-cosine-down", arm('momentum = "cosine:0.9:0.5"'), ["$.arms[0].momentum", "0.5", "LinearWarmup"]),
    ("momentum-linear-arity", arm('momentum = "linear:0.9"'), ["$.arms[0].momentum", "'linear:0.9'", "'linear:0.9:0.99'"]),
    ("momentum-half-life-inf", arm('momentum = "half-life:inf"'), ["$.arms[0].momentum", "'inf'", "finite"]),
    ("scale-nan", arm("scale = nan"), ["$.arms[0].scale", "scale=nan", "e.g. scale = 1.0"]),
    ("scale-zero", arm("scale = 0.0"), ["$.arms[0].scale", "scale=0.0", "e.g. scale = 1.0"]),
    ("rank-zero", arm("rank = 0"), ["$.arms[0]", "rank=0", "> 0"]),
    ("students-empty", arm('name = "moil"\nstudents = []'), ["$.arms[0].students", "students = []", "[[arms.students]]"]),
    ("students-same-name", arm('name = "moil"\nstudents = [{name = "a"}, {name = "a"}]'),
     ["$.arms[0].students", "['a', 'a']", "unique"]),
    ("student-lr-inf", student("lr = inf"), ["$.arms[0].students[0].lr", "lr=inf", "e.g. lr ="]),
    ("student-momentum-two", student("momentum = 2.0"), ["$.arms[0].students[0].momentum", "2.0", "[0, 1]"]),
    ("student-rank-negative", student("rank = -1"), ["$.arms[0].students[0]", "rank=-1", "> 0"]),
    ("student-refit-every-negative", student("refit_every = -1"),
     ["$.arms[0].students[0].refit_every", "refit_every=-1", "0 means off"]),
    ("student-refit-every-no-solver", student("refit_every = 5"),
     ["$.arms[0].students[0].refit_every", "refit_every = 5", "refit = 'svd' or 'als'"]),
    ("student-final-fit-no-solver", student("final_fit = true"),
     ["$.arms[0].students[0].final_fit", "final_fit = True", "refit = 'svd' or 'als'"]),
    ("student-fit-only-never-fitted", student("solver_steps = 0"),
     ["$.arms[0].students[0].solver_steps", "solver_steps = 0", "final_fit = true"]),
    ("student-fit-only-refit-every-alone", student('solver_steps = 0\nrefit = "als"\nrefit_every = 1000'),
     ["$.arms[0].students[0].solver_steps", "solver_steps = 0", "final_fit = true"]),
    ("student-fit-only-lr", student('solver_steps = 0\nrefit = "als"\nfinal_fit = true\nlr = 1e-3'),
     ["$.arms[0].students[0].lr", "lr = 0.001", "remove lr"]),
    ("student-svd-on-hybrid", student('refit = "svd"\nfinal_fit = true'),
     ["$.arms[0].students[0].refit", "approx = 'hybrid'", "refit = 'als'"]),
    ("student-als-on-lowrank", student('approx = "lowrank"\nrefit = "als"'),
     ["$.arms[0].students[0].refit", "approx = 'lowrank'", "refit = 'svd'"]),
    ("student-als-after-the-layer", student('side = "output"\nrefit = "als"'),
     ["$.arms[0].students[0].refit", "side = 'output'", "gradient steps"]),
    ("student-solver-steps-negative", student("solver_steps = -1"),
     ["$.arms[0].students[0].solver_steps", "solver_steps=-1"]),
    ("student-transform-rank-lowrank", student('approx = "lowrank"\ntransform_rank = 2'),
     ["$.arms[0].students[0].transform_rank", "transform_rank = 2", "remove transform_rank"]),
    ("limit-negative", TINY.replace("limit = 40", "limit = -1"), ["$.data.limit", "limit=-1", "0 means all images"]),
    ("limit-below-itm-batch", TINY.replace("limit = 40", "limit = 10").replace("batch_size = 8", "batch_size = 32"),
     ["data.limit = 10", "data.batch_size = 32", "data.limit >= 16", "at most 20"]),
    ("limit-below-vqa-batch",
     TINY.replace("limit = 40", "limit = 5").replace('tasks = ["itm"]', 'tasks = ["vqa"]'),
     ["data.limit = 5", "data.batch_size = 8", "data.limit >= 8"]),
    ("batch-size-odd-itm", TINY.replace("batch_size = 8", "batch_size = 7"),
     ["data.batch_size = 7", "even", "data.batch_size = 8"]),
    ("batch-size-zero", TINY.replace("batch_size = 8", "batch_size = 0"), ["$.data", "batch_size=0", "> 0"]),
    ("steps-zero", TINY.replace("steps = 2", "steps = 0"), ["$.train", "steps=0", "> 0"]),
    ("task-unknown", TINY.replace('tasks = ["itm"]', 'tasks = ["foo"]'), ["$.train.tasks", "foo", "itm"]),
    ("device-unknown", TINY + 'device = "gpu"\n', ["$.train.device", "gpu", "cuda"]),
    ("seeds-empty", TINY.replace("seeds = [0]", "seeds = []"), ["$.train", "seeds=[]", "non-empty"]),
    ("checkpoint-every-negative", TINY + "checkpoint_every = -1\n",
     ["$.train.checkpoint_every", "checkpoint_every=-1", ">= 0"]),
    ("unknown-key", TINY + "colour = 1\n", ["$.train", "colour"]),
    # names become folders (runs/<task>/<arm>, student-<name>): '..' or '/' would write outside the run
    ("arm-name-parent", arm('name = ".."'), ["$.arms[0].name", "'..'", "names a folder", "letters, digits"]),
    ("arm-name-slash", arm('name = "a/b"'), ["$.arms[0].name", "'a/b'", "no '/'"]),
    ("arm-name-empty", arm('name = ""'), ["$.arms[0].name", "name = ''", "e.g. name = 'moil-r8'"]),
    ("student-name-escapes", student('name = "../x"'), ["$.arms[0].students[0].name", "'../x'", "names a folder"]),
    ("momentum-constant-one", arm("momentum = 1.0"), ["$.arms[0].momentum", "constant momentum of 1", "[0, 1)"]),
    ("momentum-constant-one-spec", arm('momentum = "constant:1"'), ["$.arms[0].momentum", "'constant:1'", "0.99"]),
]


@pytest.mark.parametrize("text, fragments", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_config_value_is_refused_with_path_value_and_fix(text, fragments):
    with pytest.raises(ConfigError) as err:
        loads_config(text, "run.toml")
    message = str(err.value)
    assert message.startswith("run.toml: ")  # the file
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# -- 2. Python constructors ---------------------------------------------------------------
class _DownSchedule:
    """A schedule whose declared bounds go below 0."""

    @property
    def bounds(self) -> tuple[float, float]:
        return (-1e-3, 1e-3)

    def __call__(self, step: int) -> float:
        return 1e-3


API_CASES = [
    ("student-lr-negative", lambda: Student(LowRank(2), lr=-0.01), ValueError, ["lr=-0.01", "e.g. lr=1e-3"]),
    ("student-lr-nan", lambda: Student(LowRank(2), lr=math.nan), ValueError, ["lr=nan", "e.g. lr=1e-3"]),
    ("student-lr-text", lambda: Student(LowRank(2), lr="1e-3"), ValueError, ["lr='1e-3'", "e.g. lr=1e-3"]),
    ("student-lr-schedule-negative", lambda: Student(LowRank(2), lr=_DownSchedule()), ValueError,
     ["lr schedule", "(-0.001, 0.001)", ">= 0"]),
    ("student-momentum-above-one", lambda: Student(LowRank(2), momentum=1.5), ValueError, ["1.5", "[0, 1]"]),
    ("student-refit-every-zero", lambda: Student(LowRank(2), refit=SVDFit(), refit_every=0), ValueError,
     ["refit_every=0", ">= 1 or None"]),
    ("student-refit-every-no-solver", lambda: Student(LowRank(2), refit_every=3), ValueError,
     ["refit_every", "refit=moil.solvers.SVDFit()"]),
    ("student-solver-wrong-type", lambda: Student(LowRank(2), solver="gradient"), TypeError,
     ["solver", "'gradient'", "Gradient()"]),
    ("adamw-lr-text", lambda: AdamW(lr="1e-3"), TypeError, ["AdamW", "lr='1e-3'", "e.g. lr=1e-3"]),
    ("adamw-lr-inf", lambda: AdamW(lr=math.inf), ValueError, ["AdamW", "lr=inf", "e.g. lr=1e-3"]),
    ("adamw-lr-schedule-negative", lambda: AdamW(lr=_DownSchedule()), ValueError, ["AdamW", "-0.001", "WarmupLinearDecay"]),
    ("adamw-weight-decay-negative", lambda: AdamW(weight_decay=-1.0), ValueError,
     ["AdamW", "weight_decay=-1.0", "e.g. weight_decay=0.01"]),
    ("adamw-eps-nan", lambda: AdamW(eps=math.nan), ValueError, ["AdamW", "eps=nan", "e.g. eps="]),
    ("adamw-betas-above-one", lambda: AdamW(betas=(0.9, 1.5)), ValueError, ["AdamW", "(0.9, 1.5)", "betas=(0.9, 0.98)"]),
    ("adamw-betas-nan", lambda: AdamW(betas=(math.nan, 0.9)), ValueError, ["AdamW", "nan", "betas=(0.9, 0.98)"]),
    ("schedule-peak-inf", lambda: WarmupLinearDecay(math.inf), ValueError, ["WarmupLinearDecay.peak", "peak=inf", "e.g. peak="]),
    ("schedule-warmup-above-one", lambda: WarmupLinearDecay(1e-3, warmup=1.5), ValueError,
     ["WarmupLinearDecay.warmup", "warmup=1.5", "warmup=0.1"]),
    ("schedule-total-steps-zero", lambda: WarmupLinearDecay(1e-3, total_steps=0), ValueError,
     ["total_steps", "total_steps=0", "e.g. total_steps="]),
    ("half-life-nan", lambda: HalfLife(math.nan), ValueError, ["HalfLife.steps", "steps=nan", ">= 1"]),
    ("half-life-short", lambda: HalfLife(0.5), ValueError, ["HalfLife.steps", "steps=0.5", ">= 1"]),
    ("constant-negative", lambda: Constant(-0.1), ValueError, ["Constant.value", "value=-0.1", "e.g. value="]),
    ("linear-warmup-no-steps", lambda: LinearWarmup(0.9, 0.99, 0), ValueError, ["LinearWarmup.steps", "steps=0", "e.g. steps="]),
    ("cosine-down", lambda: CosineRamp(0.99, 0.5, steps=10), ValueError, ["start=0.99", "end=0.5", "LinearWarmup"]),
    ("momentum-target-above-one", lambda: MomentumTarget(1.5), ValueError, ["1.5", "[0, 1]"]),
    ("momentum-target-schedule-above-one", lambda: MomentumTarget(LinearWarmup(0.5, 1.5, 10)), ValueError, ["1.5", "[0, 1]"]),
    ("low-rank-rank-zero", lambda: LowRank(0), ValueError, ["LowRank", "rank=0", "e.g. rank=8"]),
    ("low-rank-scale-nan", lambda: LowRank(2, scale=math.nan), ValueError, ["LowRank", "scale=nan", "e.g. scale=1.0"]),
    ("low-rank-scale-zero", lambda: LowRank(2, scale=0.0), ValueError, ["LowRank", "scale=0.0", "e.g. scale=1.0"]),
    ("hybrid-scale-inf", lambda: Hybrid(2, scale=math.inf), ValueError, ["Hybrid", "scale=inf", "e.g. scale=1.0"]),
    ("hybrid-transform-rank-zero", lambda: Hybrid(2, transform_rank=0), ValueError,
     ["Hybrid", "transform_rank=0", "e.g. transform_rank=8"]),
    ("transform-rank-negative", lambda: Transform(-1), ValueError, ["Transform", "rank=-1", "e.g. rank=8"]),
    ("parse-momentum-half-life-abc", lambda: parse_momentum("half-life:abc", 10), ConfigError,
     ["'half-life:abc'", "'abc' is not a number", "'half-life:20'"]),
    ("callback-approx-not-observer", lambda: _callback(Hybrid(2)), TypeError,
     ["MoILCallback", "observer must be a moil.observer.ImitationObserver", "ImitationObserver(Hybrid(8)"]),
    ("callback-seed-text", lambda: _callback(_observer(), seed="0"), TypeError, ["MoILCallback", "seed='0'", "integer"]),
    ("callback-export-text", lambda: _callback(_observer(), export="no"), TypeError, ["export='no'", "True or False"]),
    ("from-model-not-a-module", lambda: _from_model({"w": torch.zeros(2)}), TypeError,
     ["from_model", "torch.nn.Module", "got a dict", "from_pretrained"]),
    ("vilt-from-pretrained-no-folder", lambda: _vilt().from_pretrained("/nonexistent/vilt-folder", "itm"), ValueError,
     ["vilt.from_pretrained", "'/nonexistent/vilt-folder'", "is not a folder", "save_pretrained"]),
    ("save-checkpoint-into-a-folder", lambda: _save_checkpoint_into_a_folder(), IsADirectoryError,
     ["is a directory", "checkpoint.safetensors"]),
]


def _callback(observer, **kwargs):
    from moil.integrations.trainer import MoILCallback

    return MoILCallback(observer, **kwargs)


def _observer():
    from moil.observer import ImitationObserver

    return ImitationObserver(LowRank(2), targets=["query"])


def _from_model(model):
    from moil.backbones import from_model

    return from_model(model, ["query"])


def _vilt():
    from moil.backbones import vilt

    return vilt


def _save_checkpoint_into_a_folder():
    import tempfile

    from moil.checkpoint import save_checkpoint

    root = Path(tempfile.mkdtemp())
    (root / "run").mkdir()
    try:
        return save_checkpoint(root / "run", {"x": torch.zeros(2)})
    finally:
        assert [p.name for p in root.rglob("*")] == ["run"]  # nothing written, no temp file left


@pytest.mark.parametrize("make, error, fragments", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_constructor_refuses_with_field_value_and_fix(make, error, fragments):
    with pytest.raises(error) as err:
        make()
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


# -- 3. values that need the model or the data ------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    """One tiny VisualBERT (ITM) and its 40-image data, shared by the cases below."""
    cfg = loads_config(LORA)
    data = load_data(cfg)
    return cfg, data, build_backbone(cfg, "itm", data)


@pytest.fixture(scope="module")
def batch(tiny):
    _, data, _ = tiny
    return next(iter(data.train.itm_batches(batch_size=4, generator=0)))


MODEL_CASES = [
    ("lora-rank-above-width", arm('recipe = "lora"\nrank = 1000'), ["$.arms[0].rank", "rank=1000", "choose rank <= 32"]),
    ("peft-rank-above-width", arm('recipe = "peft-lora"\nrank = 1000'), ["$.arms[0].rank", "rank=1000", "choose rank <= 32"]),
    ("student-rank-above-width", student("rank = 1000"), ["$.arms[0].students[0].rank", "rank=1000", "choose rank <= 32"]),
    ("student-transform-rank-above-width", student("rank = 2\ntransform_rank = 1000"),
     ["$.arms[0].students[0].transform_rank", "transform_rank=1000", "choose transform_rank <= 32"]),
]


@pytest.mark.parametrize("text, fragments", [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES])
def test_rank_above_a_target_width_is_refused_at_backbone_build(tiny, text, fragments):
    _, _, backbone = tiny
    with pytest.raises(ConfigError) as err:
        check_ranks(loads_config(text), backbone)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


INPUT_CASES = [
    ("input-ids-float", lambda b: {**b, "input_ids": b["input_ids"].float()},
     ["batch['input_ids']", "torch.float32", ".long()"]),
    ("input-ids-out-of-vocab", lambda b: {**b, "input_ids": b["input_ids"] + 40_000},
     ["batch['input_ids']", "vocab_size is 30522", "model's own tokenizer"]),
    ("input-ids-negative", lambda b: {**b, "input_ids": b["input_ids"] - 10_000}, ["batch['input_ids']", "[0, 30522)"]),
    ("token-type-ids-out-of-range", lambda b: {**b, "token_type_ids": b["token_type_ids"] + 5},
     ["batch['token_type_ids']", "type_vocab_size", "[0, 2)"]),
]


@pytest.mark.parametrize("spoil, fragments", [c[1:] for c in INPUT_CASES], ids=[c[0] for c in INPUT_CASES])
def test_bad_token_inputs_are_named(tiny, batch, spoil, fragments):
    _, _, backbone = tiny
    with pytest.raises(ValueError) as err:
        check_inputs(backbone.model, spoil(batch))
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_backbone_call_names_a_float_input_ids(tiny, batch):
    """The forward itself explains a float ``input_ids`` (not torch's embedding error)."""
    _, _, backbone = tiny
    with pytest.raises(ValueError, match=r"batch\['input_ids'\] has dtype torch.float32"):
        backbone(backbone.head_params(), {**batch, "input_ids": batch["input_ids"].float()})


def test_train_stream_refuses_a_split_smaller_than_a_batch_at_once(tiny):
    """Fault 1: a batch that the split cannot fill is refused when the stream is built."""
    _, data, _ = tiny
    with pytest.raises(ValueError, match=r"data\.batch_size = 100 takes 50.*data\.limit"):
        train_stream(data, "itm", 100, seed=0)


def test_train_stream_never_spins_on_an_empty_epoch(tiny):
    """Fault 1, the class: even when a split passes the size check, an epoch that yields no
    batch raises instead of starting the next empty epoch forever. Bounded: the fake split
    fails the test after 3 epochs rather than hanging it."""
    _, data, _ = tiny
    calls = itertools.count()

    class EmptySplit:
        images = data.train.images

        def itm_batches(self, **kw):
            if next(calls) > 3:
                raise AssertionError("the stream spun over empty epochs")
            return iter(())

    fake = type(data)(data.name, data.task, EmptySplit(), data.val, data.test)
    stream = train_stream(fake, "itm", 8, seed=0)
    with pytest.raises(RuntimeError, match=r"yielded no itm batch.*data\.batch_size = 8"):
        next(stream)


# -- 4. the CLI: refused before the run folder is touched ------------------------------------
runner = CliRunner()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


CLI_CASES = [
    ("lr-inf", ["train"], arm("lr = inf"), [], ["$.arms[0].lr", "lr=inf", "e.g. lr ="]),
    ("momentum-above-one", ["train"], arm("momentum = 1.5"), [], ["$.arms[0].momentum", "1.5", "[0, 1]"]),
    ("warmup-negative", ["train"], arm("warmup = -1"), [], ["$.arms[0].warmup", "-1.0", "e.g. warmup = 0.1"]),
    ("weight-decay-negative", ["train"], arm("weight_decay = -1"), [], ["$.arms[0].weight_decay", "-1.0", "0 turns it off"]),
    ("scale-nan", ["train"], arm('recipe = "lora"\nscale = nan'), [], ["$.arms[0].scale", "nan", "e.g. scale = 1.0"]),
    ("students-empty", ["train"], arm("students = []"), [], ["$.arms[0].students", "[[arms.students]]"]),
    ("half-life-abc", ["train"], arm('momentum = "half-life:abc"'), [], ["$.arms[0].momentum", "'abc'", "'half-life:20'"]),
    ("limit-below-batch", ["train"], TINY.replace("batch_size = 8", "batch_size = 32").replace("limit = 40", "limit = 10")
     + '[[arms]]\nrecipe = "lora"\n', [], ["data.limit = 10", "data.batch_size = 32", "data.limit >= 16"]),
    ("task-unknown", ["train"], LORA, ["--task", "foo"], ["--task 'foo'", "train.tasks", "itm"]),
    ("task-not-in-config", ["train"], LORA, ["--task", "vqa"], ["--task 'vqa'", "add 'vqa' to train.tasks"]),
    ("arm-unknown", ["train"], LORA, ["--arm", "nope"], ["no arm 'nope'", "['lora']"]),
    ("lr-sweep-in-train", ["train"], arm('recipe = "lora"\nlr = [1e-3, 3e-3]'), [], ["several learning rates", "moil ablate"]),
    ("rank-above-width", ["train"], arm('recipe = "lora"\nrank = 1000'), [], ["$.arms[0].rank", "rank=1000", "choose rank <= 32"]),
    ("student-rank-above-width", ["train"], student("rank = 1000"), [],
     ["$.arms[0].students[0].rank", "rank=1000", "choose rank <= 32"]),
    ("not-toml", ["train"], "[train\nsteps = 3", [], ["run.toml", "not valid TOML"]),
    ("unknown-key", ["train"], LORA + "colour = 1\n", [], ["run.toml", "unknown field 'colour'"]),
    ("ablate-lr-inf", ["ablate"], arm("lr = inf"), [], ["$.arms[0].lr", "lr=inf", "e.g. lr ="]),
    ("ablate-students-empty", ["ablate"], arm("students = []"), [], ["$.arms[0].students", "[[arms.students]]"]),
    # --resume keeps the folder's run, --overwrite discards it: both at once used to discard it
    ("resume-and-overwrite", ["train"], LORA, ["--resume", "--overwrite"], ["--resume and --overwrite", "only one"]),
    ("ablate-resume-and-overwrite", ["ablate"], LORA, ["--resume", "--overwrite"], ["--resume and --overwrite"]),
    ("arm-name-escapes", ["ablate"], arm('name = ".."'), [], ["$.arms[0].name", "'..'", "names a folder"]),
]
if not torch.cuda.is_available():
    CLI_CASES.append(
        ("device-cuda-without-gpu", ["train"], TINY + 'device = "cuda"\n[[arms]]\nrecipe = "lora"\n', [],
         ["train.device = 'cuda'", "no CUDA device", "'auto'"]),
    )


#: Refused with the right message, but only after the grid wrote its folder (config.toml,
#: grid.json): the grid builds its backbones after writing.
CLI_PARAMS = [pytest.param(*c[1:], id=c[0]) for c in CLI_CASES] + [
    pytest.param(["ablate"], arm('recipe = "lora"\nrank = 1000'), [], ["$.arms[0].rank", "rank=1000", "choose rank <= 32"],
                 id="ablate-rank-above-width"),
]


@pytest.mark.parametrize("folder", ["fresh", "existing"])
@pytest.mark.parametrize("command, text, extra, fragments", CLI_PARAMS)
def test_cli_refuses_before_touching_the_run_folder(tmp_path, folder, command, text, extra, fragments):
    config = tmp_path / "run.toml"
    config.write_text(text)
    out = tmp_path / "out"
    if folder == "existing":  # a folder with the user's own file in it
        out.mkdir()
        (out / "notes.txt").write_text("mine\n")
    before = snapshot(out) if out.exists() else None
    result = runner.invoke(app, [*command, "--config", str(config), "--out", str(out), *extra])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())  # rich wraps long lines
    for fragment in fragments:
        assert " ".join(fragment.split()) in message, (fragment, message)
    if before is None:
        assert not out.exists() or not any(out.iterdir()), sorted(out.rglob("*"))
    else:
        assert snapshot(out) == before


def test_demo_override_below_one_batch_is_refused(tmp_path):
    """`moil demo --limit` goes through the config's checks: 5 images cannot fill an ITM batch of 32."""
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--quick", "--out", str(out), "--model", "tiny", "--limit", "5"])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "--limit" in message and "data.limit = 5" in message and "data.limit >= 16" in message
    assert not out.exists()


def test_config_file_that_is_not_utf8_is_named_and_a_bom_is_read(tmp_path):
    """A Latin-1 config names the file and the fix; a UTF-8 byte-order mark (Windows editors) is no TOML error."""
    from moil.harness.config import load_config

    (tmp_path / "latin1.toml").write_bytes(b"[train]\nsteps = 3  # \xe9t\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1\.toml: not UTF-8 text.*save it as UTF-8"):
        load_config(tmp_path / "latin1.toml")
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbf[train]\nsteps = 3\n")
    assert load_config(tmp_path / "bom.toml").train.steps == 3


# -- 5. the Python training loop: arguments refused before any step --------------------------
class _DuckRecipe:
    """The least of a recipe train() reads."""

    def init(self, backbone, seed=0):
        return _DuckState(0)

    def step(self, state, backbone, batch):
        return _DuckState(state.step + 1), {}

    def finalize(self, state, backbone):
        return state


class _DuckState(tuple):
    def __new__(cls, step):
        return super().__new__(cls, (step,))

    step = property(lambda self: self[0])


class _DuckBackbone:
    def base(self):
        return {"w": torch.zeros(1)}


TRAIN_CASES = [
    ("backbone-is-a-raw-model", dict(backbone=torch.nn.Linear(2, 2)), TypeError,
     ["train: backbone must be a moil.backbones.Backbone", "got a Linear", "from_model"]),
    ("recipe-is-an-approximation", dict(recipe=LowRank(2)), TypeError, ["train: recipe must be a moil recipe", "LowRank"]),
    ("seed-float", dict(seed=1.5), ValueError, ["train: seed must be an integer", "seed=1.5"]),
    ("checkpoint-every-negative", dict(checkpoint_every=-1, run_dir="RUN"), ValueError,
     ["checkpoint_every", "checkpoint_every=-1", ">= 1"]),
    ("checkpoint-seconds-negative", dict(checkpoint_seconds=-5, run_dir="RUN"), ValueError,
     ["checkpoint_seconds", "checkpoint_seconds=-5", "> 0"]),
    ("resume-without-run-dir", dict(resume=True), ValueError, ["need run_dir", "resume=True"]),
    ("checkpoint-every-without-run-dir", dict(checkpoint_every=2), ValueError, ["need run_dir", "checkpoint_every=2"]),
    ("run-dir-is-a-file", dict(run_dir="FILE"), ValueError, ["run_dir=", "is not a folder"]),
    ("on-step-not-callable", dict(on_step=3), ValueError, ["on_step must be a function", "3"]),
    ("validate-not-callable", dict(validate=3, validate_every=1), ValueError, ["validate", "got validate=3"]),
    ("batches-one-dict", dict(batches={"input_ids": torch.zeros(2, 3)}), TypeError,
     ["batches is one batch (a dict)", "[batch] for one"]),
    ("batches-none", dict(batches=None), TypeError, ["batches is a NoneType", "function step -> batch"]),
    ("batches-a-tensor", dict(batches=torch.zeros(4, 3)), TypeError, ["batches is a Tensor", "list of batch dicts"]),
    ("validate-returns-a-number", dict(validate=lambda state: 0.5, validate_every=1), TypeError,
     ["validate must return a dict", "0.5"]),
]


@pytest.mark.parametrize("given, error, fragments", [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES])
def test_train_refuses_a_bad_argument_before_any_step(tmp_path, given, error, fragments):
    from moil.train import train

    (tmp_path / "FILE").write_text("mine\n")
    given = {k: str(tmp_path / v) if k == "run_dir" else v for k, v in given.items()}
    args = {"recipe": _DuckRecipe(), "backbone": _DuckBackbone(), "batches": [{}], "steps": 1, **given}
    with pytest.raises(error) as err:
        train(args.pop("recipe"), args.pop("backbone"), args.pop("batches"), **args)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]  # no run folder, no checkpoint


# -- 6. batches that reach a model: the input is named, not the model's internals ------------
@pytest.fixture(scope="module")
def vilt_tiny():
    from moil.backbones import vilt

    backbone = vilt.build(vilt.tiny("itm", seed=0))
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(0, 99, (4, 7), generator=g), "pixel_values": torch.randn(4, 3, 32, 32, generator=g)}
    return backbone, batch


PIXEL_CASES = [
    ("pixels-uint8", lambda b: {**b, "pixel_values": (b["pixel_values"].abs() * 60).to(torch.uint8)},
     ["batch['pixel_values']", "torch.uint8", "raw pixel values", "processor(images=...)"]),
    ("pixels-grey", lambda b: {**b, "pixel_values": b["pixel_values"][:, :1]},
     ["batch['pixel_values']", "1 channel(s)", "num_channels is 3", "convert('RGB')"]),
    ("pixels-no-batch-dim", lambda b: {**b, "pixel_values": b["pixel_values"][0]},
     ["batch['pixel_values']", "(3, 32, 32)", "(B, C, H, W)"]),
    ("input-ids-a-list", lambda b: {**b, "input_ids": b["input_ids"].tolist()},
     ["batch['input_ids'] is a list", "return_tensors='pt'"]),
    ("text-batch-sizes-differ", lambda b: {**b, "attention_mask": torch.ones(2, 7, dtype=torch.int64)},
     ["different batch sizes", "'input_ids': 4", "'attention_mask': 2"]),
]


@pytest.mark.parametrize("spoil, fragments", [c[1:] for c in PIXEL_CASES], ids=[c[0] for c in PIXEL_CASES])
def test_backbone_names_a_bad_image_input(vilt_tiny, spoil, fragments):
    backbone, batch = vilt_tiny
    with pytest.raises(ValueError) as err:
        backbone(backbone.head_params(), spoil(batch))
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


# -- 7. data on disk: a bad row is named when the data is read, before any training ----------
@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    """A tiny ViLT folder and an image folder of 8 RGB images, each with its own caption."""
    import json

    from PIL import Image

    from moil.testing.folders import save_tiny_folder

    root = tmp_path_factory.mktemp("disk")
    save_tiny_folder("vilt", root / "model", ["a", "red", "blue", "square"])
    folder = root / "images"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(8):
        pixels = torch.randint(0, 256, (16, 16, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": f"a {'red' if i % 2 else 'blue'} square {i}",
                     "question": "a red square", "answers": ["red", "red", "blue"], "label": "true" if i % 2 else "false",
                     "feats": [[0.1 * i] * 4] * 3, "boxes": [[0.0, 0.0, 0.5, 0.5]] * 3})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _split(disk: Path, tmp_path: Path, rows=None, raw: bytes | None = None) -> Path:
    """A copy of the image folder, its metadata rows changed by ``rows(i, row)`` or replaced by ``raw``."""
    import json
    import shutil

    folder = tmp_path / "split"
    shutil.copytree(disk / "images", folder)
    meta = folder / "metadata.jsonl"
    if raw is not None:
        meta.write_bytes(raw(meta.read_bytes()))
    if rows is not None:
        new = [rows(i, json.loads(line)) for i, line in enumerate(meta.read_text().splitlines())]
        meta.write_text("".join(json.dumps(r) + "\n" for r in new))
    return folder


def _disk_config(disk: Path, split: Path, task: str = "itm", columns: str = "") -> str:
    return (f'[model]\npretrained = "{disk / "model"}"\nfamily = "vilt"\n[data]\ntrain = "{split}"\nbatch_size = 4\n'
            f"{columns}[train]\ntasks = [{task!r}]\nsteps = 1\neval_splits = [\"test\"]\n".replace(
                f'batch_size = 4\n', f'test = "{split}"\nbatch_size = 4\n'))


DISK_CASES = [
    ("metadata-torn", dict(raw=lambda b: b[:-25]), "itm", "", ["data.train", "metadata.jsonl", "in row 7", "fix or remove"]),
    ("metadata-not-utf8", dict(raw=lambda b: b.replace(b"blue", b"bl\xfc", 1)), "itm", "",
     ["metadata.jsonl", "UnicodeDecodeError", "UTF-8"]),
    ("metadata-empty", dict(raw=lambda b: b""), "itm", "", ["data.train", "metadata.jsonl is empty", "one row per example"]),
    ("caption-null", dict(rows=lambda i, r: {**r, "text": None if i == 2 else r["text"]}), "itm", "",
     ["data.train", "row 2 has text = None", "non-empty strings"]),
    ("caption-a-number", dict(rows=lambda i, r: {**r, "text": 5}), "itm", "", ["row 0 has text = 5 (int)"]),
    ("caption-empty", dict(rows=lambda i, r: {**r, "text": " "}), "itm", "", ["row 0 has text = ' '"]),
    ("one-caption-for-itm", dict(rows=lambda i, r: {**r, "text": "a red square"}), "itm", "",
     ["every row has the same text 'a red square'", "two different"]),
    ("image-file-missing", dict(rows=lambda i, r: {**r, "file_name": "gone.png" if i == 3 else r["file_name"]}), "itm", "",
     ["data.train", "do not exist", "gone.png"]),
    ("vqa-answers-null", dict(rows=lambda i, r: {**r, "answers": None if i == 1 else r["answers"]}), "vqa", "",
     ["row 1 has answers = None", "an answer string or a non-empty list"]),
    ("vqa-answers-empty", dict(rows=lambda i, r: {**r, "answers": []}), "vqa", "", ["row 0 has answers = []"]),
    ("nlvr2-label-maybe", dict(rows=lambda i, r: {**r, "label": "maybe" if i == 4 else r["label"]}), "nlvr2",
     '[data.columns]\npair = ["image", "image"]\n', ["row 4 has label = 'maybe'", "true / false (or 1 / 0)"]),
    ("features-nan", dict(rows=lambda i, r: {**r, "feats": [[float("nan")] * 4] * 3 if i == 5 else r["feats"]}), "itm",
     '[data.columns]\nfeatures = "feats"\n', ["data.train", "row 5", "NaN or inf"]),
    ("features-ragged-rows", dict(rows=lambda i, r: {**r, "feats": [[0.0] * 4] * (2 if i == 3 else 3)}), "itm",
     '[data.columns]\nfeatures = "feats"\n', ["row 3: features of shape (2, 4)", "earlier rows have (3, 4)", "pad"]),
    ("boxes-in-pixels", dict(rows=lambda i, r: {**r, "boxes": [[0, 0, 16, 16]] * 3}), "itm",
     '[data.columns]\nfeatures = "feats"\nboxes = "boxes"\n', ["row 0", "in [0, 1]", "[0.0, 16.0]", "divide pixel boxes"]),
]


@pytest.mark.parametrize("spoil, task, columns, fragments", [c[1:] for c in DISK_CASES], ids=[c[0] for c in DISK_CASES])
def test_a_bad_row_on_disk_is_named_when_read(disk, tmp_path, spoil, task, columns, fragments):
    text = _disk_config(disk, _split(disk, tmp_path, **spoil), task, columns)
    with pytest.raises(ConfigError) as err:
        load_data(loads_config(text, "run.toml"))
    message = " ".join(str(err.value).split())
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_a_16_bit_image_keeps_its_range_and_float_pixels_are_refused(tmp_path):
    """PIL's own convert('RGB') clips a 16-bit grey image at 255 (4 096 levels became 17 white-ish ones)."""
    import numpy as np
    from PIL import Image

    from moil.harness.data.disk import decode_image

    levels = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 … 65 520
    Image.fromarray(levels).save(tmp_path / "deep.png")
    rgb = np.asarray(decode_image({"path": str(tmp_path / "deep.png"), "bytes": None}, "data.train"))
    assert rgb.shape == (64, 64, 3) and rgb.min() == 0 and rgb.max() == 255 and len(np.unique(rgb)) == 256
    Image.fromarray((levels / 65535).astype(np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(ConfigError, match=r"float.tiff.*32-bit float pixels.*save it as 8-bit or 16-bit"):
        decode_image({"path": str(tmp_path / "float.tiff"), "bytes": None}, "data.train")


def test_export_into_a_folder_of_the_users_is_refused_and_left_as_it_was(tmp_path):
    """The export's FileExistsError used to escape as a traceback (exit 1)."""
    config = tmp_path / "run.toml"
    config.write_text(LORA)
    trained = runner.invoke(app, ["train", "--config", str(config), "--out", str(tmp_path / "run")])
    assert trained.exit_code == 0, trained.output
    for target, kind in (("mine", "folder"), ("mine.txt", "file")):
        out = tmp_path / target
        out.mkdir() if kind == "folder" else out.write_text("mine\n")
        if kind == "folder":
            (out / "notes.txt").write_text("mine\n")
        before = snapshot(out) if kind == "folder" else out.read_bytes()
        result = runner.invoke(app, ["export", "--run", str(tmp_path / "run"), "-f", "merged", "-o", str(out)])
        message = " ".join(result.output.split())
        assert result.exit_code == 2 and "error:" in message and str(out.name) in message, message
        assert (snapshot(out) if kind == "folder" else out.read_bytes()) == before


def test_out_that_is_the_runs_own_model_or_data_is_refused_and_left_as_it_was(disk, tmp_path):
    """`moil export -f merged -o <model.pretrained>` used to replace the user's pretrained model with the
    merged one (it holds a config.json, so it passed for an earlier export); `moil train --out` a data split
    wrote the run's files among the images."""
    import shutil

    model = shutil.copytree(disk / "model", tmp_path / "model")
    split = _split(disk, tmp_path)
    text = _disk_config(disk, split).replace(str(disk / "model"), str(model)) + '[[arms]]\nrecipe = "lora"\nrank = 2\n'
    (tmp_path / "run.toml").write_text(text)
    for out in (model, split):
        before = snapshot(out)
        result = runner.invoke(app, ["train", "--config", str(tmp_path / "run.toml"), "--out", str(out)])
        message = " ".join(result.output.split())
        assert result.exit_code == 2 and "an input of this run" in message and "a folder of its own" in message, message
        assert snapshot(out) == before
    assert runner.invoke(app, ["train", "--config", str(tmp_path / "run.toml"), "--out", str(tmp_path / "run")]).exit_code == 0
    before = snapshot(model)
    result = runner.invoke(app, ["export", "--run", str(tmp_path / "run"), "-f", "merged", "-o", str(model)])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and f"is model.pretrained = {str(model)!r}" in message, message
    assert snapshot(model) == before


MODEL_FOLDER_CASES = [
    ("class-of-another-architecture", 'family = "generic"\nmodel_class = "BertForSequenceClassification"\n'
     'targets = ["query"]\n', "itm", ["model.model_class = 'BertForSequenceClassification'", "holds a 'vilt' model",
                                     "none of its weights would load", "ViltFor"]),
    ("class-that-is-no-model", 'family = "generic"\nmodel_class = "AutoTokenizer"\ntargets = ["query"]\n', "itm",
     ["model.model_class = 'AutoTokenizer'", "not a transformers model class"]),
    ("family-of-another-architecture", 'family = "clip"\n', "retrieval",
     ["model.family = 'clip'", "CLIPModel", "holds a 'vilt' model", "family = 'auto'"]),
]


@pytest.mark.parametrize("model, task, fragments", [c[1:] for c in MODEL_FOLDER_CASES], ids=[c[0] for c in MODEL_FOLDER_CASES])
def test_a_model_class_that_would_load_none_of_the_folders_weights_is_refused(disk, model, task, fragments):
    """transformers only warns when a class of another architecture loads a folder, and starts from
    random weights: the run would train no pretrained model at all."""
    from moil.harness.pretrained import load_backbone

    text = f'[model]\npretrained = "{disk / "model"}"\n{model}[data]\ntrain = "{disk / "images"}"\n[train]\ntasks = [{task!r}]\n'
    with pytest.raises(ConfigError) as err:
        load_backbone(loads_config(text, "run.toml").model, task)
    message = " ".join(str(err.value).split())
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# -- 8. what the checks must not do: refuse valid input, or replace the model's own error ------------
def test_a_model_error_is_not_blamed_on_a_key_the_model_never_reads(vilt_tiny):
    """An attention_mask of the wrong length fails inside ViLT; the extra ``question_id`` list is not
    what the model received, so the model's own error comes back unchanged (same type and message)."""
    backbone, batch = vilt_tiny
    bad = {**batch, "attention_mask": torch.ones(4, 5, dtype=torch.int64)}
    with pytest.raises(Exception) as direct:
        backbone.model(**backbone.inputs(bad))
    with pytest.raises(type(direct.value)) as err:
        backbone(backbone.head_params(), {**bad, "question_id": [1, 2, 3, 4]})
    assert type(err.value) is type(direct.value) and str(err.value) == str(direct.value)
    assert "question_id" not in str(err.value)


def test_out_of_memory_in_the_forward_is_raised_unchanged(vilt_tiny, monkeypatch):
    """accelerate's find_executable_batch_size halves the batch on torch.OutOfMemoryError: it must
    not come back as a ValueError, even when the batch holds something the layout check refuses."""
    backbone, batch = vilt_tiny
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def fails(*args, **kwargs):
        raise oom
    monkeypatch.setattr(torch.func, "functional_call", fails)
    with pytest.raises(torch.OutOfMemoryError) as err:
        backbone(backbone.head_params(), {**batch, "input_ids": batch["input_ids"].tolist()})
    assert err.value is oom


def test_a_found_input_problem_keeps_the_models_error_as_its_cause(vilt_tiny):
    backbone, batch = vilt_tiny
    with pytest.raises(ValueError, match=r"batch\['input_ids'\] is a list") as err:
        backbone(backbone.head_params(), {**batch, "input_ids": batch["input_ids"].tolist()})
    assert err.value.__cause__ is not None


def test_retrieval_and_flattened_pixel_layouts_are_accepted(vilt_tiny):
    """A CLIP/BridgeTower retrieval batch holds N texts and M images; a Qwen2-VL-style processor
    gives 2-D pixel_values (patches, C * T * P * P). Neither is a layout problem."""
    from moil.backbones import clip
    from moil.backbones.input_checks import layout_problem

    texts = {"input_ids": torch.randint(0, 99, (4, 7)), "attention_mask": torch.ones(4, 7, dtype=torch.int64)}
    assert layout_problem(vilt_tiny[0].model, {**texts, "pixel_values": torch.randn(2, 3, 32, 32)}) is None
    assert layout_problem(vilt_tiny[0].model, {**texts, "pixel_values": torch.randn(64, 1176)}) is None
    backbone = clip.build(clip.tiny("contrastive", seed=0))
    size = backbone.model.config.vision_config.image_size
    out = backbone(backbone.head_params(), {**texts, "pixel_values": torch.randn(2, 3, size, size)})
    assert out["text_embeds"].shape[0] == 4 and out["image_embeds"].shape[0] == 2


def test_the_forward_imports_no_module_of_checks_while_running():
    """pixel_problem / input_problem live in a leaf module base.py imports at its top."""
    import inspect

    from moil.backbones import base, input_checks

    assert base.pixel_problem is input_checks.pixel_problem and base.input_problem is input_checks.input_problem
    assert "import" not in inspect.getsource(base.Backbone.__call__)


def test_a_saved_dataset_whose_image_column_holds_paths_is_checked(tmp_path):
    """save_to_disk of a column of path strings: its files are checked (it used to crash on
    chunk.field("path") of a StringArray), and a missing one is named."""
    import datasets
    from PIL import Image

    from moil.harness.data.disk import check_rows, read_split

    paths = []
    for i in range(3):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"image": paths, "text": ["a", "b", "c"]}).save_to_disk(str(saved))
    rows = read_split(str(saved), "data.train", "image")
    check_rows(rows, {"text": ("text", "text")}, ["image"], str(saved), "data.train", distinct="text")  # accepted
    (tmp_path / "1.png").unlink()
    with pytest.raises(ConfigError, match=r"1 image file\(s\) of column 'image' do not exist.*1\.png"):
        check_rows(rows, {"text": ("text", "text")}, ["image"], str(saved), "data.train")


def test_only_a_torn_or_non_utf8_file_becomes_a_fix_the_row_error(tmp_path):
    """A full disk or no permission is not a bad row: it propagates as it is. A torn file's error
    is chained (traceback kept), and a cyclic cause chain ends."""
    import pyarrow as pa

    from moil.harness.data.disk import _loaded

    def raises(err):
        def load():
            raise err
        return load
    for err in (PermissionError(13, "Permission denied"), OSError(28, "No space left on device")):
        with pytest.raises(type(err)) as got:
            _loaded(raises(err), tmp_path / "m.jsonl", "data.train", "x")
        assert got.value is err
    torn, inner = pa.ArrowInvalid("JSON parse error: Invalid value. in row 3"), ValueError("inner")
    torn.__context__, inner.__context__ = inner, torn  # a cycle
    with pytest.raises(ConfigError, match=r"m\.jsonl \((ValueError: inner|ArrowInvalid: JSON parse).*fix or remove") as got:
        _loaded(raises(torn), tmp_path / "m.jsonl", "data.train", "x")
    assert got.value.__cause__ is torn


def test_a_metadata_file_of_blank_lines_is_empty_and_a_leading_blank_line_is_not(tmp_path):
    from moil.harness.data.disk import _not_empty

    (tmp_path / "blank.jsonl").write_text("\n  \n\t\n")
    with pytest.raises(ConfigError, match=r"blank\.jsonl is empty"):
        _not_empty(tmp_path / "blank.jsonl", "data.train", "x")
    (tmp_path / "rows.jsonl").write_text('\n{"file_name": "0.png"}\n')
    _not_empty(tmp_path / "rows.jsonl", "data.train", "x")  # accepted


def test_box_corners_a_rounding_error_outside_0_1_are_clamped_and_beyond_slack_refused():
    from moil.harness.data.visual_inputs import BOX_SLACK, with_boxes

    feats = torch.zeros(2, 3)
    out = with_boxes(feats, [[0.0, 0.25, 1.0000001, 0.5], [-1e-7, 0.0, 0.75, 1.0]], "row 0")
    torch.testing.assert_close(out[:, 3:7], torch.tensor([[0.0, 0.25, 1.0, 0.5], [0.0, 0.0, 0.75, 1.0]]), rtol=0, atol=0)
    torch.testing.assert_close(out[:, 7:], torch.tensor([[1.0, 0.25], [0.75, 1.0]]), rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"row 0.*in \[0, 1\]"):
        with_boxes(feats, [[0.0, 0.0, 1.0 + 2 * BOX_SLACK, 0.5]] * 2, "row 0")


def test_an_auto_model_class_loads_and_tokenizers_processors_configs_are_refused(disk):
    """AutoModelFor… classes loaded before the model-class check; they pick the folder's architecture."""
    from moil.harness.generic import load_generic, model_class

    def spec(name):
        text = (f'[model]\npretrained = "{disk / "model"}"\nfamily = "generic"\nmodel_class = "{name}"\n'
                f'targets = ["query"]\n[data]\ntrain = "{disk / "images"}"\n[train]\ntasks = ["vqa"]\n')
        return loads_config(text, "run.toml").model
    backbone = load_generic(spec("AutoModelForVisualQuestionAnswering"), str(disk / "model"), "vqa", num_answers=3)
    assert type(backbone.model).__name__ == "ViltForQuestionAnswering" and backbone.targets
    for name in ("AutoTokenizer", "AutoProcessor", "AutoConfig", "AutoImageProcessor"):
        with pytest.raises(ConfigError, match=f"model.model_class = '{name}' is not a transformers model class"):
            model_class(spec(name))


def test_numpy_numbers_are_accepted_where_an_integer_or_a_number_is_meant(tmp_path):
    import numpy as np

    from moil.integrations.trainer import MoILCallback
    from moil.train_checks import check_arguments

    args = dict(steps=np.int64(3), seed=np.int64(1), run_dir=str(tmp_path), checkpoint_every=np.int32(2), resume=False,
                on_step=None, validate=None, validate_every=None)
    for seconds in (np.float64(300), np.float32(0.5), np.int64(60), 300):
        check_arguments(_DuckRecipe(), _DuckBackbone(), checkpoint_seconds=seconds, **args)  # accepted
    for seconds in (True, np.float64("inf"), np.float64(0)):
        with pytest.raises(ValueError, match="checkpoint_seconds must be a finite number > 0"):
            check_arguments(_DuckRecipe(), _DuckBackbone(), checkpoint_seconds=seconds, **args)
    callback = MoILCallback(_observer(), seed=np.int64(7))
    assert callback.seed == 7 and type(callback.seed) is int
    with pytest.raises(TypeError, match="seed=True"):
        MoILCallback(_observer(), seed=True)


def test_from_pretrained_wraps_only_a_local_folders_load_failure(disk, tmp_path, monkeypatch):
    """A hub id's errors (network, gated repo) and an out-of-memory come back as transformers raised
    them; a local folder without weights is named. A slash-less id is a hub id, not a folder."""
    import shutil

    from moil.backbones import vilt
    from moil.backbones.family import local_path

    assert local_path("bert-base-uncased") is None and local_path("owner/name") is None
    assert local_path("./model") is not None and local_path(str(disk / "model")) == disk / "model"
    cls = vilt.FAMILY.task("itm").cls
    for given, error in (("owner/name", OSError("gated repo: log in with huggingface-cli login")),
                         (str(disk / "model"), torch.OutOfMemoryError("CUDA out of memory"))):
        def fails(*args, error=error, **kwargs):
            raise error
        with monkeypatch.context() as m:
            m.setattr(cls, "from_pretrained", fails)
            with pytest.raises(type(error)) as err:
                vilt.from_pretrained(given, "itm")
        assert err.value is error
    folder = shutil.copytree(disk / "model", tmp_path / "model")
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ValueError, match=r"vilt\.from_pretrained: cannot load a ViltForImageAndTextRetrieval") as err:
        vilt.from_pretrained(str(folder), "itm")
    assert isinstance(err.value.__cause__, OSError)


def test_answers_and_pair_labels_are_parsed_in_one_place_and_bools_are_no_answers():
    from moil.harness.data import disk
    from moil.harness.data.collate import _label, pair_label, soft_scores

    for value in (True, False, 1, 0, "true", " FALSE ", "1", "0", "maybe", 2, None):
        assert disk._is_label(value) == (pair_label(value) is not None)
        if pair_label(value) is not None:
            assert _label(value) == pair_label(value)
    for cell in (True, [True, "yes"]):
        assert not disk._is_answers(cell)
        with pytest.raises(ConfigError, match="holds a bool"):
            soft_scores(cell)
    assert disk._is_answers(3) and soft_scores(3) == {"3": 1.0}


def test_inputs_of_lives_next_to_check_apart():
    from moil.harness import exporting, grid, run, run_folder

    assert grid.inputs_of is run_folder.inputs_of and run.inputs_of is run_folder.inputs_of
    assert "moil.harness.run import" not in Path(exporting.__file__).read_text()
