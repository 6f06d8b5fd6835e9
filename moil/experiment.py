"""From a :class:`~moil.config.Config` to trained, evaluated runs: the CLI's engine.

One *run* = one arm × task × seed × learning rate: build the recipe, train it on
the training split, evaluate every candidate it offers (merged students,
teacher, momentum targets, heads) on the validation and test splits, and
record time, peak memory and stored size. Everything a run writes lands in its
own folder (``metrics.jsonl``, ``results.json``, compact students).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import attrs
import psutil
import torch

from moil.backbones import visualbert
from moil.config import ArmSpec, Config, build_approx, parse_momentum
from moil.data import DemoData, prepare_demo_data
from moil.export import save_student
from moil.objectives import ImageTextMatching, VQAScore, best_low_rank, itm_accuracy, vqa_score
from moil.optim import AdamW, WarmupLinearDecay
from moil.recipes import FullFineTune, HeadOnly, LoRA, MoIL, PeftLowRank, Student
from moil.solvers import ALSFit, Gradient, SVDFit
from moil.train import CHECKPOINT, evaluate, train

__all__ = [
    "PRIMARY_METRIC", "Job", "Runner", "build_backbone", "build_recipe", "load_data", "primary_candidate",
    "run_one", "stored_parameters", "train_stream",
]

PRIMARY_METRIC = {"itm": "accuracy", "vqa": "vqa_score"}
TASK_LOSS = {"itm": ImageTextMatching(), "vqa": VQAScore()}
METRICS = {
    "itm": {"accuracy": lambda o, b: itm_accuracy(o["itm_logits"], b["itm_labels"])},
    "vqa": {"vqa_score": lambda o, b: vqa_score(o["vqa_logits"], b["vqa_targets"])},
}
EVAL_SEED = 2024  # one fixed draw of negatives / question phrasings for every arm


def load_data(config: Config) -> DemoData:
    return prepare_demo_data(config.data.dataset, config.data.split_seed, limit=config.data.limit or None)


def device_of(config: Config) -> torch.device:
    """The device the config asks for (``auto``: CUDA when available)."""
    if config.train.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.train.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device = 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'.")
    return torch.device(config.train.device)


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def build_backbone(config: Config, task: str, data: DemoData):
    """The model the config names, as a task :class:`~moil.backbones.Backbone`."""
    dim = data.train.visual_embeds.shape[-1]
    answers = len(data.task.answer_vocab)
    if config.model.family == "minilm-efficientnet":
        from moil.data.text import minilm_path

        model, new = visualbert.from_bert(minilm_path(), dim, task=task, num_answers=answers if task == "vqa" else None)
    else:
        model = visualbert.tiny(task, visual_embedding_dim=dim, num_answers=answers, vocab_size=30522, max_position_embeddings=64)
        new = [n for n, _ in model.named_parameters() if ".visual_projection." in n]
    # Newly initialised parameters other than the head (the visual projection) are
    # trained and stored by every arm: a frozen random projection would hide the image.
    extra = [n for n in new if not n.startswith("cls.")]
    return visualbert.build(model.eval().to(device_of(config)), mlp=config.model.mlp, trainable=extra)


def _schedule(lr: float, steps: int, warmup: float) -> WarmupLinearDecay:
    return WarmupLinearDecay(lr, steps, warmup)


def build_recipe(arm: ArmSpec, task: str, lr: float, steps: int):
    """The recipe an arm names, with the reference optimiser (AdamW β=(0.9, 0.98),
    warm-up then linear decay) at learning rate ``lr``."""
    opt = AdamW(lr=_schedule(lr, steps, arm.warmup), betas=(0.9, 0.98), weight_decay=arm.weight_decay)
    loss = TASK_LOSS[task]
    if arm.recipe == "head":
        return HeadOnly(loss, opt)
    if arm.recipe == "full":
        return FullFineTune(loss, opt, arm.head_lr_scale)
    if arm.recipe == "lora":
        return LoRA(loss, build_approx(arm.approx, arm.rank, scale=arm.scale), opt, arm.head_lr_scale)
    if arm.recipe.startswith("peft-"):
        variant = arm.recipe.split("-", 1)[1]
        return PeftLowRank(loss, arm.rank, variant=variant, alpha=arm.scale * arm.rank, optimizer=opt,
                           head_lr_scale=arm.head_lr_scale)
    students = {}
    for s in arm.students:
        refit = {"none": None, "svd": SVDFit(), "als": ALSFit()}[s.refit]
        students[s.name] = Student(
            build_approx(s.approx, s.rank, transform_rank=s.transform_rank, side=s.side),
            momentum=None if s.momentum is None else parse_momentum(s.momentum, steps),
            lr=None if s.lr is None else _schedule(s.lr, steps, arm.warmup),
            solver=Gradient(s.solver_steps),
            refit=refit,
            refit_every=s.refit_every or None,
            final_fit=s.final_fit,
        )
    return MoIL(loss, students, momentum=parse_momentum(arm.momentum, steps), optimizer=opt,
                head_lr_scale=arm.head_lr_scale)


def primary_candidate(recipe) -> str:
    """The candidate an arm is judged by (its stored model)."""
    if isinstance(recipe, MoIL):
        return f"student/{next(iter(recipe.students))}"
    return {LoRA: "student/student", PeftLowRank: "student/student", FullFineTune: "teacher",
            HeadOnly: "heads"}[type(recipe)]


def stored_parameters(recipe, state, backbone) -> dict[str, int]:
    """Numbers each candidate must store beyond the pre-trained model."""
    heads = sum(v.numel() for v in backbone.head_params().values())
    dense = sum(v.numel() for v in backbone.base().values())
    base = backbone.base()
    out = {}
    for name in recipe.candidates(state, backbone):
        if isinstance(recipe, PeftLowRank):
            out[name] = recipe.num_stored(backbone) + heads
        elif name.startswith("student/"):
            adapter, _ = recipe.students_of(state, backbone)[name.split("/", 1)[1]]
            out[name] = adapter.num_params(base) + heads
        elif name == "heads":
            out[name] = heads
        else:
            out[name] = dense + heads
    return out


def train_stream(
    data: DemoData, task: str, batch_size: int, seed: int, device: torch.device = torch.device("cpu")
) -> Iterator[dict]:
    """Training batches epoch after epoch, epoch ``e`` shuffled by ``(seed, e)``."""
    split, epoch = data.train, 0
    while True:
        make = split.itm_batches if task == "itm" else split.vqa_batches
        for batch in make(batch_size=batch_size, generator=seed * 10_007 + epoch, drop_last=True):
            yield _to(batch, device)
        epoch += 1


def eval_batches(
    data: DemoData, split: str, task: str, batch_size: int, device: torch.device = torch.device("cpu")
) -> list[dict]:
    """The fixed evaluation batches of a split (same negatives / phrasings for every arm)."""
    part = data[split]
    make = part.itm_batches if task == "itm" else part.vqa_batches
    return [_to(b, device) for b in make(batch_size=batch_size, generator=EVAL_SEED, shuffle=False)]


class MetricsLog:
    """``metrics.jsonl``: one JSON line per step, flushed as it goes.

    Resumed, it keeps the lines of steps before the first one trained again: steps
    logged after the last checkpoint (a run killed between checkpoints) are replayed,
    not doubled. The rewrite is atomic, so a kill during it loses nothing.
    """

    def __init__(self, path: Path, resume: bool) -> None:
        self.path, self._check = path, resume and path.exists()
        self._file = path.open("a" if self._check else "w")

    def write(self, step: int, metrics: dict) -> None:
        if self._check:
            self._check = False
            self._drop_from(step)
        self._file.write(json.dumps({"step": step, **metrics}) + "\n")
        self._file.flush()

    def _drop_from(self, step: int) -> None:
        def before(line: str) -> bool:
            try:
                return json.loads(line)["step"] < step
            except (ValueError, KeyError, TypeError):
                return False  # a line cut short by a kill

        lines = self.path.read_text().splitlines()
        keep = [line for line in lines if before(line)]
        if len(keep) != len(lines):
            self._file.close()
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in keep))
            os.replace(tmp, self.path)
            self._file = self.path.open("a")

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()


class PeakMemory:
    """Peak resident memory of this process during a ``with`` block, minus its start (MiB).

    A sampling thread (every 20 ms) — CPU allocations by torch are invisible to
    tracemalloc; on CUDA, ``torch.cuda.max_memory_allocated`` is used instead.
    """

    def __enter__(self) -> "PeakMemory":
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self._proc, self._stop = psutil.Process(), threading.Event()
        self.start = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def mib(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        return (self.peak - self.start) / 2**20


def imitation_report(recipe, state, backbone) -> dict[str, Any]:
    """Per student: its weight distance to its target and the Eckart–Young floor of
    that target at the student's low rank; plus singular spectra of one layer."""
    if not isinstance(recipe, MoIL):
        return {}
    base, out = backbone.base(), {}
    weights = [k for k in base if k.endswith(".weight")]
    probe = weights[len(weights) // 2]
    for name, (adapter, params) in recipe.students_of(state, backbone).items():
        target = state.targets[recipe._target_of(recipe.students[name])].target
        merged = adapter.merge(params, base)
        rank = adapter.approx.rank
        floor2 = sum(float(best_low_rank((target[k] - base[k]).double(), rank).error) ** 2 for k in weights)
        dist2 = sum(float((target[k] - merged[k]).double().square().sum()) for k in weights)
        update2 = sum(float((target[k] - base[k]).double().square().sum()) for k in weights)
        out[name] = {
            "rank": rank,
            "distance": dist2 ** 0.5,
            "eckart_young_floor": floor2 ** 0.5,
            "target_update_norm": update2 ** 0.5,
            "uncovered_fraction": dist2 / update2 if update2 else 0.0,
            "probe_layer": probe,
            "spectrum_teacher": torch.linalg.svdvals((state.teacher[probe] - base[probe]).double()).tolist(),
            "spectrum_target": torch.linalg.svdvals((target[probe] - base[probe]).double()).tolist(),
            "spectrum_student": torch.linalg.svdvals((merged[probe] - base[probe]).double()).tolist(),
        }
    return out


def run_one(
    config: Config,
    arm: ArmSpec,
    task: str,
    seed: int,
    lr: float,
    backbone,
    data: DemoData,
    run_dir: Path,
    *,
    steps: int | None = None,
    splits: tuple[str, ...] = ("val", "test"),
    on_step: Callable[[int, dict], None] | None = None,
    resume: bool = False,
    keep_checkpoint: bool = False,
) -> dict[str, Any]:
    """Train and evaluate one run; write ``metrics.jsonl``, ``results.json``, students."""
    steps = steps or config.train.steps
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe = build_recipe(arm, task, lr, steps)
    with MetricsLog(run_dir / "metrics.jsonl", resume) as log, PeakMemory() as memory:
        def record(step: int, metrics: dict) -> None:
            log.write(step, metrics)
            if on_step is not None:
                on_step(step, metrics)

        started = time.perf_counter()
        state = train(
            recipe, backbone, train_stream(data, task, config.data.batch_size, seed, device_of(config)),
            steps=steps, seed=seed, run_dir=run_dir, resume=resume, on_step=record,
            checkpoint_every=config.train.checkpoint_every or None, precision=config.train.precision,
        )
        seconds = time.perf_counter() - started
    candidates = recipe.candidates(state, backbone)
    sizes = stored_parameters(recipe, state, backbone)
    scores = {
        name: {
            split: evaluate(backbone, params, eval_batches(data, split, task, config.data.eval_batch_size,
                                                           device_of(config)), METRICS[task])
            for split in splits
        }
        | {"stored_parameters": sizes[name]}
        for name, params in candidates.items()
    }
    for name, (adapter, params) in recipe.students_of(state, backbone).items():
        heads = {k: v for k, v in candidates[f"student/{name}"].items() if k in backbone.heads}
        save_student(run_dir / f"student-{name}", adapter, params, heads=heads,
                     extra={"arm": arm.name, "task": task, "seed": seed, "lr": lr}, overwrite=True)
    if not keep_checkpoint:
        (run_dir / CHECKPOINT).unlink(missing_ok=True)
    result = {
        "task": task, "arm": arm.name, "recipe": arm.recipe, "seed": seed, "lr": lr, "steps": steps,
        "primary": primary_candidate(recipe), "metric": PRIMARY_METRIC[task],
        "candidates": scores, "train_seconds": seconds, "peak_memory_mib": memory.mib,
        "model_parameters": backbone.num_parameters(),
        "imitation": imitation_report(recipe, state, backbone),
    }
    (run_dir / "results.json").write_text(json.dumps(result, indent=1))
    return result


@attrs.frozen
class Job:
    """One run of a grid: an arm × task × seed at one learning rate, and where it goes."""

    task: str
    arm: str
    seed: int
    lr: float
    folder: Path
    steps: int
    splits: tuple[str, ...]
    label: str


class Runner:
    """Runs the jobs of one config: the data loaded once, one backbone per task
    built on first use."""

    def __init__(self, config: Config, data: DemoData | None = None) -> None:
        self.config, self.data, self.backbones = config, data, {}
        self.arms = {a.name: a for a in config.arms}

    def __call__(self, job: Job, resume: bool, on_step: Callable[[int, dict], None] | None = None) -> dict:
        if self.data is None:
            self.data = load_data(self.config)
        if job.task not in self.backbones:
            self.backbones[job.task] = build_backbone(self.config, job.task, self.data)
        return run_one(
            self.config, self.arms[job.arm], job.task, job.seed, job.lr, self.backbones[job.task], self.data,
            job.folder, steps=job.steps, splits=job.splits, resume=resume, on_step=on_step,
        )
