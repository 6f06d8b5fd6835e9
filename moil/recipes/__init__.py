"""Recipes: approximations, objectives, momentum and optimisers composed into a train step.

Each recipe is an immutable component with pure ``init``/``step``/``finalize``
methods over an explicit state (see :mod:`moil.recipes.base`). Swapping one for
another is the ablation interface:

* :class:`MoIL` — teacher forward, momentum target, student imitation (the
  method); ``momentum=0.0`` gives MoIL without momentum (target = teacher);
* :class:`LoRA` — the student in the forward pass, task loss only;
* :class:`FullFineTune` — the teacher alone (dense targets);
* :class:`HeadOnly` — the task heads alone (the floor);
* :class:`ImitateFixed` — students fitted to a fixed fine-tuned checkpoint;
* :class:`PeftLowRank` — LoRA / DoRA / PiSSA trained through PEFT (a baseline).
"""

from moil.recipes.base import Recipe, Student
from moil.recipes.finetune import FineTuneState, FullFineTune
from moil.recipes.head_only import HeadOnly, HeadOnlyState
from moil.recipes.imitate import ImitateFixed, ImitateState
from moil.recipes.lora import LoRA, LoRAState
from moil.recipes.moil import MoIL, MoILState, default_optimizer
from moil.recipes.peft_baseline import PeftLowRank, PeftLowRankState

__all__ = [
    "FineTuneState",
    "FullFineTune",
    "HeadOnly",
    "HeadOnlyState",
    "ImitateFixed",
    "ImitateState",
    "LoRA",
    "LoRAState",
    "MoIL",
    "MoILState",
    "PeftLowRank",
    "PeftLowRankState",
    "Recipe",
    "Student",
    "default_optimizer",
]
