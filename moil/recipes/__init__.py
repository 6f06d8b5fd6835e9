"""Recipes: approximations, objectives, momentum and optimisers composed into a train step.

Each recipe is an immutable component with pure methods over an explicit state (the
protocol: :mod:`moil.recipes.protocol`). They share two parts: :class:`TaskStep` (the
task gradient through whatever is in the forward, then AdamW per trained group) and
:class:`Imitation` (momentum targets and the students that follow them). Swapping one
recipe for another is the ablation interface:

* :class:`MoIL` — :class:`FullFineTune`'s teacher step with an :class:`Imitation`
  between its gradient and its update; ``momentum=0.0`` gives MoIL without momentum;
* :class:`LoRA` — the student in the forward pass, task loss only;
* :class:`FullFineTune` — the teacher alone (dense targets);
* :class:`HeadOnly` — the task heads alone (the floor);
* :class:`ImitateFixed` — students fitted to a fixed fine-tuned checkpoint;
* :class:`PeftLowRank` — LoRA / DoRA / PiSSA trained through PEFT (a baseline);
* :class:`TailDecay` — wraps MoIL or FullFineTune: the teacher's update beyond a
  student's rank decays as it trains, so the student loses less of it.

:func:`data_aware_refit` refits a trained recipe's students in the norm of their layers'
real inputs (:mod:`moil.solvers.data_aware`).
"""

from moil.recipes.data_aware import data_aware_refit
from moil.recipes.finetune import FineTuneState, FullFineTune
from moil.recipes.head_only import HeadOnly, HeadOnlyState
from moil.recipes.imitate import ImitateFixed, ImitateState
from moil.recipes.imitation import Follower, Imitation, ImitationState
from moil.recipes.lora import LoRA, LoRAState
from moil.recipes.moil import MoIL, MoILState
from moil.recipes.peft_baseline import PeftLowRank, PeftLowRankState
from moil.recipes.protocol import Recipe
from moil.recipes.student import Student
from moil.recipes.tail_decay import TailDecay, decay_tail
from moil.recipes.task_step import TaskState, TaskStep, default_optimizer

__all__ = [
    "FineTuneState",
    "Follower",
    "FullFineTune",
    "HeadOnly",
    "HeadOnlyState",
    "ImitateFixed",
    "ImitateState",
    "Imitation",
    "ImitationState",
    "LoRA",
    "LoRAState",
    "MoIL",
    "MoILState",
    "PeftLowRank",
    "PeftLowRankState",
    "Recipe",
    "Student",
    "TailDecay",
    "TaskState",
    "TaskStep",
    "data_aware_refit",
    "decay_tail",
    "default_optimizer",
]
