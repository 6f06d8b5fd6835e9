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
]


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
