"""From config specs to library components: data, device, backbone, approximation,
momentum schedule and recipe.

Everything here reads a spec of :mod:`moil.harness.config` and returns a plain
library object (a :class:`~moil.backbones.Backbone`, an approximation, a momentum
schedule ``step -> m``, a recipe); nothing here trains or evaluates.
"""

from __future__ import annotations

from typing import Any

import torch

from moil.approx import Hybrid, LowRank, Transform, on_side
from moil.backbones import visualbert
from moil.harness.config import ArmSpec, Config, ConfigError
from moil.harness.data import DemoData, prepare_demo_data
from moil.momentum import MomentumTarget
from moil.objectives import ImageTextMatching, VQAScore
from moil.optim import AdamW
from moil.recipes import FullFineTune, HeadOnly, LoRA, MoIL, PeftLowRank, Student
from moil.schedules import Constant, CosineRamp, HalfLife, LinearWarmup, WarmupLinearDecay
from moil.solvers import ALSFit, Gradient, SVDFit

__all__ = [
    "TASK_LOSS", "build_approx", "build_backbone", "build_recipe", "device_of", "load_data", "parse_momentum",
]

TASK_LOSS = {"itm": ImageTextMatching(), "vqa": VQAScore()}


def load_data(config: Config) -> DemoData:
    """The demo data the config's ``[data]`` names (features cached on first use)."""
    return prepare_demo_data(config.data.dataset, config.data.split_seed, limit=config.data.limit or None)


def device_of(config: Config) -> torch.device:
    """The device the config asks for (``auto``: CUDA when available)."""
    if config.train.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.train.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device = 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'.")
    return torch.device(config.train.device)


def build_backbone(config: Config, task: str, data: DemoData):
    """The model the config names, as a task :class:`~moil.backbones.Backbone`."""
    dim = data.train.visual_embeds.shape[-1]
    answers = len(data.task.answer_vocab)
    if config.model.family == "minilm-efficientnet":
        from moil.harness.data.text import minilm_path

        model, new = visualbert.from_bert(minilm_path(), dim, task=task, num_answers=answers if task == "vqa" else None)
    else:
        model = visualbert.tiny(task, visual_embedding_dim=dim, num_answers=answers, vocab_size=30522, max_position_embeddings=64)
        new = [n for n, _ in model.named_parameters() if ".visual_projection." in n]
    # Newly initialised parameters other than the head (the visual projection) are
    # trained and stored by every arm: a frozen random projection would hide the image.
    extra = [n for n in new if not n.startswith("cls.")]
    return visualbert.build(model.eval().to(device_of(config)), mlp=config.model.mlp, trainable=extra)


def _momentum_schedule(spec: str | float, steps: int) -> Any:
    if isinstance(spec, (int, float)):
        return Constant(float(spec))
    kind, _, rest = str(spec).partition(":")
    args = [float(a) for a in rest.split(":") if a]
    if kind == "none":
        return Constant(0.0)
    if kind == "constant" and len(args) == 1:
        return Constant(args[0])
    if kind == "half-life" and len(args) == 1:
        return HalfLife(args[0])
    if kind == "cosine" and len(args) in (1, 2):
        return CosineRamp(*args, steps=steps)
    if kind == "linear" and len(args) == 2:
        return LinearWarmup(args[0], args[1], steps)
    return None


def parse_momentum(spec: str | float, steps: int) -> Any:
    """A momentum schedule from a short spec.

    ``0.99`` or ``"constant:0.99"``; ``"half-life:20"`` (m = 0.5^(1/20));
    ``"cosine:0.99"`` or ``"cosine:0.99:1.0"`` (BYOL ramp over the run);
    ``"linear:0.9:0.99"`` (linear warm-up over the run). ``"none"`` = 0 (target = teacher).

    Raises:
      ConfigError: the spec names no schedule, a number in it does not parse, or its
        momenta leave ``[0, 1]``.
    """
    try:
        schedule = _momentum_schedule(spec, steps)
        if schedule is not None:
            MomentumTarget(schedule)  # the consumer's check: momenta in [0, 1]
    except (TypeError, ValueError) as err:
        raise ConfigError(f"momentum {spec!r}: {err}") from None
    if schedule is None:
        raise ConfigError(
            f"momentum {spec!r} is not understood; use 0.99, 'constant:0.99', 'half-life:20', "
            "'cosine:0.99[:1.0]', 'linear:0.9:0.99' or 'none'."
        )
    return schedule


def build_approx(name: str, rank: int, *, transform_rank: int | None = None, side: str = "input", scale: float = 1.0):
    """The approximation component a spec names (``side``: the transform's side, a
    variant class of its own — :func:`moil.approx.on_side`)."""
    if name == "lowrank":
        return LowRank(rank, scale=scale)
    if name == "transform":
        return on_side(Transform, side)(rank)
    if name == "hybrid":
        return on_side(Hybrid, side)(rank, transform_rank, scale=scale)
    raise ConfigError(f"approx {name!r}: use 'hybrid', 'lowrank' or 'transform'.")


def _schedule(lr: float, steps: int, warmup: float) -> WarmupLinearDecay:
    """Warm-up over the fraction ``warmup`` of ``steps``, then linear decay to 0 at ``steps``."""
    return WarmupLinearDecay(lr, total_steps=steps, warmup=warmup)


def build_recipe(arm: ArmSpec, task: str, lr: float, steps: int):
    """The recipe an arm names, with the reference optimiser (AdamW β=(0.9, 0.98),
    warm-up then linear decay over ``steps``) at learning rate ``lr``."""
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
