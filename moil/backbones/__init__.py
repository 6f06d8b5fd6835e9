"""Backbones: an unmodified transformers model as frozen tensors, targets, heads and a pure forward.

:class:`Backbone` drives the user's model with ``torch.func.functional_call``;
:func:`from_model` builds one for any model from target/head patterns. A
*family* (:mod:`~moil.backbones.family`) is the reference setup as data — q/k/v
targets and their sharing, and per task its transformers class, heads, inputs and
outputs — over one builder; one module per family holds it and what is its own:
:mod:`~moil.backbones.vilt`, :mod:`~moil.backbones.bridgetower`,
:mod:`~moil.backbones.visualbert`, :mod:`~moil.backbones.clip`
(``get_family("vilt")`` looks one up by name). :mod:`~moil.backbones.checks`
verifies the contract (model untouched, forward equal to a directly-run copy).

Example:
  >>> import torch
  >>> import moil.approx as ma
  >>> from moil.backbones import vilt
  >>> bb = vilt.build(vilt.tiny("vqa"))            # or vilt.from_pretrained(path, "vqa")
  >>> ad = bb.adapter(ma.Hybrid(4))                 # q/k/v share the transform per layer
  >>> student = ad.init(bb.base())
  >>> batch = {"input_ids": torch.randint(3, 99, (2, 5)), "pixel_values": torch.randn(2, 3, 32, 32)}
  >>> bb({**ad.merge(student, bb.base()), **bb.head_params()}, batch)["vqa_logits"].shape
  torch.Size([2, 5])
"""

from moil.backbones.base import Backbone, auto_sharing, from_model
from moil.backbones.calls import LABEL_KEYS, Logits, SelectInputs, forward_inputs, logits_of
from moil.backbones.family import FAMILIES, Family, Task, get_family
from moil.backbones.moments import input_moments
from moil.backbones.targets import (
    Linear,
    combine,
    linear_layers,
    matches,
    partition,
    select_params,
    select_targets,
)

__all__ = [
    "Backbone",
    "FAMILIES",
    "input_moments",
    "Family",
    "Task",
    "from_model",
    "get_family",
    "select_targets",
    "select_params",
    "linear_layers",
    "matches",
    "partition",
    "combine",
    "Linear",
    "SelectInputs",
    "Logits",
    "logits_of",
    "forward_inputs",
    "auto_sharing",
    "LABEL_KEYS",
]
