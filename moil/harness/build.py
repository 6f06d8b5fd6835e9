"""From config specs to library components: data, device, backbone, approximation,
momentum schedule and recipe.

Everything here reads a spec of :mod:`moil.harness.config` and returns a plain
library object (a :class:`~moil.backbones.Backbone`, an approximation, a momentum
schedule ``step -> m``, a recipe); nothing here trains or evaluates.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from moil.approx import Hybrid, LowRank, Transform, on_side
from moil.backbones import visualbert
from moil.harness.config import ArmSpec, Config, ConfigError
from moil.harness.data import DemoData, prepare_demo_data
from moil.harness.momentum_spec import parse_momentum
from moil.objectives import ContrastiveRetrieval, ImageTextMatching, PairClassification, VQAScore
from moil.optim import AdamW
from moil.recipes import FullFineTune, HeadOnly, LoRA, MoIL, PeftLowRank, Student, TailDecay
from moil.schedules import WarmupLinearDecay
from moil.solvers import ALSFit, FitOnly, Gradient, SVDFit

__all__ = [
    "TASK_LOSS", "build_approx", "build_backbone", "build_recipe", "check_ranks", "device_of", "load_data",
    "parse_momentum", "run_steps",
]

TASK_LOSS = {
    "itm": ImageTextMatching(), "vqa": VQAScore(),
    "retrieval": ContrastiveRetrieval(learnable_logit_scale="logit_scale"), "nlvr2": PairClassification(),
}


def load_data(config: Config) -> Any:
    """The data the config's ``[data]`` names: the demo set (features cached on first use), or
    with ``data.train`` set, the splits on disk read with the model folder's processor
    (:func:`moil.harness.data.diskdata.load_disk_data`)."""
    if config.data.train is not None:
        from moil.harness.data.diskdata import load_disk_data
        from moil.harness.pretrained import load_processor

        return load_disk_data(config, load_processor(config.model, config.data.columns.features))
    if config.data.dataset == "digit-pairs":
        from moil.harness.data.pairs import prepare_pair_data

        return prepare_pair_data(config.data.split_seed, limit=config.data.limit or None,
                                 eval_pairs=config.data.eval_pairs)
    return prepare_demo_data(config.data.dataset, config.data.split_seed, limit=config.data.limit or None)


def device_of(config: Config) -> torch.device:
    """The device the config asks for (``auto``: CUDA when available)."""
    if config.train.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "train.device = 'cuda' but torch sees no CUDA device on this machine; set train.device = "
            "'auto' (CUDA when available) or 'cpu'."
        )
    return torch.device(config.train.device)


def run_steps(config: Config, data: Any, task: str) -> int:
    """The run's length: ``data.epochs`` passes over train when set, else ``train.steps``."""
    if config.data.epochs and hasattr(data, "steps_per_epoch"):
        return config.data.epochs * data.steps_per_epoch(task, config.data.batch_size)
    if config.data.epochs:
        raise ConfigError("data.epochs applies to data from disk (data.train); for the demo set train.steps.")
    return config.train.steps


def build_backbone(config: Config, task: str, data: DemoData):
    """The model the config names, as a task :class:`~moil.backbones.Backbone`."""
    if config.model.pretrained is not None:
        from moil.harness.pretrained import load_backbone

        answers = len(data.answers) if task == "vqa" else None
        backbone = load_backbone(config.model, task, num_answers=answers, device=device_of(config))
        check_ranks(config, backbone)
        if config.model.family == "generic":  # an output field the model lacks: named before any writing
            from moil.harness.generic import check_outputs

            check_outputs(backbone, data, task, config.data.batch_size)
        else:  # the first batch, before any writing: a bad feature, box or image row of it is named now
            data.train_stream(task, config.data.batch_size, 0, device_of(config))(0)
        return backbone
    dim = data.train.visual_embeds.shape[-1]
    answers = len(data.task.answer_vocab)
    if config.model.family == "minilm-efficientnet" and config.model.prealign.steps:
        from moil.harness.prealign import prealigned_model

        model, new, aligned = prealigned_model(config.model.prealign, task, answers if task == "vqa" else None,
                                               split_seed=config.data.split_seed, limit=config.data.limit)
        print(f"moil: {task} starts from the pre-aligned model (model.prealign, {config.model.prealign.steps} steps, "
              f"cached): validation ITM accuracy {aligned['val_itm_accuracy']:.4f}", file=sys.stderr)
    elif config.model.family == "minilm-efficientnet":
        from moil.harness.data.text import minilm_path

        model, new = visualbert.from_bert(minilm_path(), dim, task=task, num_answers=answers if task == "vqa" else None)
    else:
        model = visualbert.tiny(task, visual_embedding_dim=dim, num_answers=answers, vocab_size=30522, max_position_embeddings=64)
        new = [n for n, _ in model.named_parameters() if ".visual_projection." in n]
    # Newly initialised parameters other than the head (the visual projection, unless
    # pre-aligned) are trained and stored by every arm: a frozen random projection would hide the image.
    extra = [n for n in new if not n.startswith("cls.")]
    backbone = visualbert.build(model.eval().to(device_of(config)), task=task, mlp=config.model.mlp, trainable=extra)
    check_ranks(config, backbone)
    return backbone


def _arm_approximations(arm: ArmSpec) -> list[tuple[str, Any]]:
    """``(field path within the arm, approximation)`` for every adapter the arm would build."""
    if arm.recipe == "lora":
        return [("rank", build_approx(arm.approx, arm.rank, scale=arm.scale))]
    if arm.recipe.startswith("peft-"):
        return [("rank", LowRank(arm.rank))]
    if arm.recipe == "moil":
        return [
            (f"students[{j}].rank", build_approx(s.approx, s.rank, transform_rank=s.transform_rank, side=s.side))
            for j, s in enumerate(arm.students)
        ]
    return []


def check_ranks(config: Config, backbone) -> None:
    """Refuse, naming the config path, a rank that no target weight of ``backbone`` can hold
    (a rank above ``min(out, in)`` of a target: more numbers than a dense update)."""
    shapes = {k: tuple(w.shape) for k, w in backbone.base().items() if k.endswith(".weight")}
    for i, arm in enumerate(config.arms):
        for field, approx in _arm_approximations(arm):
            for key, (out_features, in_features) in shapes.items():
                try:
                    approx.num_params(out_features, in_features)
                except ValueError as err:
                    if field.endswith("rank") and "transform_rank" in str(err):
                        field = field.replace("rank", "transform_rank")
                    raise ConfigError(
                        f"$.arms[{i}].{field} (arm {arm.name!r}): {err} The target {key.removesuffix('.weight')!r} "
                        f"of model.family = {config.model.family!r} is ({out_features}, {in_features})."
                    ) from None


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
    warm-up then linear decay over ``steps``) at learning rate ``lr``; wrapped in
    :class:`~moil.recipes.TailDecay` when the arm has a ``tail_decay`` table."""
    recipe = _arm_recipe(arm, task, lr, steps)
    if arm.tail_decay is None:
        return recipe
    return TailDecay(recipe, arm.tail_decay.rank, arm.tail_decay.strength, arm.tail_decay.every)


def _arm_recipe(arm: ArmSpec, task: str, lr: float, steps: int):
    opt = AdamW(lr=_schedule(lr, steps, arm.warmup), betas=(0.9, 0.98), weight_decay=arm.weight_decay)
    loss = TASK_LOSS[task]
    if arm.recipe == "head":
        return HeadOnly(loss, opt)
    if arm.recipe == "full":
        return FullFineTune(loss, opt, arm.head_scale(lr))
    if arm.recipe == "lora":
        return LoRA(loss, build_approx(arm.approx, arm.rank, scale=arm.scale), opt, arm.head_scale(lr))
    if arm.recipe.startswith("peft-"):
        variant = arm.recipe.split("-", 1)[1]
        return PeftLowRank(loss, arm.rank, variant=variant, alpha=arm.scale * arm.rank, optimizer=opt,
                           head_lr_scale=arm.head_scale(lr))
    students = {}
    for s in arm.students:
        refit = {"none": None, "svd": SVDFit(), "als": ALSFit()}[s.refit]
        students[s.name] = Student(
            build_approx(s.approx, s.rank, transform_rank=s.transform_rank, side=s.side),
            momentum=None if s.momentum is None else parse_momentum(s.momentum, steps),
            lr=None if s.lr is None else _schedule(s.lr, steps, arm.warmup),
            solver=Gradient(s.solver_steps) if s.solver_steps else FitOnly(),
            refit=refit,
            refit_every=s.refit_every or None,
            final_fit=s.final_fit,
        )
    return MoIL(loss, students, momentum=parse_momentum(arm.momentum, steps), optimizer=opt,
                head_lr_scale=arm.head_scale(lr))
