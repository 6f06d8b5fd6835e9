"""A backbone family as data — q/k/v and MLP patterns, tasks, tiny config — over one builder.

A :class:`Family` (ViLT, VisualBERT, BridgeTower, CLIP) says which linear layers
of its transformers models are the default targets, how they share, and for each
:class:`Task` the task class, heads, inputs and outputs. :meth:`Family.build`,
:meth:`Family.from_pretrained` and :meth:`Family.tiny` are the same for every
family; a family module holds its data and only what is really its own.
:func:`get_family` looks a family up by name (``get_family("vilt").tiny("vqa")``),
importing its module on first use.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import attrs
import torch
from torch import nn

from moil.approx import TRANSFORM_KEYS, Sharing
from moil.backbones.base import Backbone, auto_sharing
from moil.backbones.calls import SelectInputs
from moil.backbones.targets import Patterns, select_params, select_targets

__all__ = ["FAMILIES", "Family", "Task", "family_patterns", "get_family", "load_errors", "local_path", "seeded", "task_of"]

#: Family name → the module that defines it as ``FAMILY`` (imported on first use:
#: each module loads its transformers model classes).
FAMILIES = MappingProxyType({
    "bridgetower": "moil.backbones.bridgetower",
    "clip": "moil.backbones.clip",
    "vilt": "moil.backbones.vilt",
    "visualbert": "moil.backbones.visualbert",
})


def _frozen_dict(value: Mapping) -> Mapping:
    return MappingProxyType(dict(value))


@attrs.frozen
class Task:
    """One task of a family: the transformers class and how moil drives it.

    Attributes:
      cls: the transformers task class (``ViltForQuestionAnswering``, …).
      outputs: ``(model output, batch) → dict`` with moil's keys (``"vqa_logits"``, …).
      inputs: ``batch → kwargs`` for ``model(**kwargs)``.
      heads: parameter names / module paths of the task head (always trained).
      optional: option name → more head modules trained when that option is on
        (``{"pooler": ("vilt.pooler",)}``; the options' defaults are the family's).
      passthrough: ``(output key, parameter name)`` pairs copied into the outputs.
      tiny: config fields :meth:`Family.tiny` sets for this task.
      answers: whether ``num_labels`` is the answer count (``num_answers``).
    """

    cls: type
    outputs: Callable[..., dict]
    inputs: SelectInputs
    heads: tuple[str, ...] = ()
    optional: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict, converter=_frozen_dict)
    passthrough: tuple[tuple[str, str], ...] = ()
    tiny: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_dict)
    answers: bool = False


@attrs.frozen
class Family:
    """A backbone family: default targets, sharing, tasks and a tiny config.

    Attributes:
      name: the family's name (``"vilt"``), used in messages and by :func:`get_family`.
      config: the transformers config class (``ViltConfig``).
      qkv: regex of the default targets (attention q/k/v, or a fused ``in_proj``).
      mlp: regex of the MLP linears ``mlp=True`` adds.
      tasks: task name → :class:`Task`; the first is the default task.
      tiny_config: config fields of a small random-init model (hidden 32 or so, 2 layers).
      options: option name → its default (``{"pooler": True}``), see :attr:`Task.optional`.
      sharing: the rule grouping targets that read one input.
    """

    name: str
    config: type
    qkv: str
    mlp: str
    tasks: Mapping[str, Task] = attrs.field(
        converter=_frozen_dict, validator=attrs.validators.min_len(1)
    )
    tiny_config: Mapping[str, Any] = attrs.field(converter=_frozen_dict)
    options: Mapping[str, bool] = attrs.field(
        factory=lambda: {"pooler": True}, converter=_frozen_dict
    )
    sharing: Sharing = Sharing(TRANSFORM_KEYS)

    def task(self, task: str | None = None) -> Task:
        """The :class:`Task` named ``task`` (default: the family's first)."""
        if task is None:
            return next(iter(self.tasks.values()))
        if task not in self.tasks:
            raise ValueError(
                f"{self.name}: task must be one of {sorted(self.tasks)}, got task={task!r}."
            )
        return self.tasks[task]

    def build(
        self,
        model: nn.Module,
        targets: Patterns | None = None,
        *,
        task: str | None = None,
        mlp: bool = False,
        exclude: Patterns = (),
        trainable: Sequence[str] = (),
        **options: bool,
    ) -> Backbone:
        """A :class:`~moil.backbones.Backbone` for one of the family's task models.

        Args:
          model: an instance of one of the tasks' classes; only read.
          targets: patterns (see :func:`~moil.backbones.select_targets`); default
            :attr:`qkv`, the attention q/k/v of every layer.
          task: which task ``model`` serves (it picks the outputs' keys); default the
            first task whose class ``model`` is.
          mlp: also adapt each layer's MLP linears (default targets only).
          exclude: patterns of layers to leave out.
          trainable: more parameter names / module paths trained (and stored) with the
            heads, e.g. a newly initialised projection no checkpoint provides.
          options: the family's :attr:`options`, e.g. ``pooler=False`` to freeze the
            pooler ViLT treats as part of the head.

        Raises:
          TypeError: ``model`` is not a task model of this family, or an unknown option.
          ValueError: an unknown task, ``targets`` together with ``mlp=True``.
        """
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise TypeError(
                f"{self.name}.build: unknown option(s) {unknown}; this family takes "
                f"{sorted(self.options)}."
            )
        spec = task_of(model, self.tasks, self.name) if task is None else self.task(task)
        if not isinstance(model, spec.cls):
            raise TypeError(
                f"{self.name}: task={task!r} needs a {spec.cls.__name__}, got a "
                f"{type(model).__name__}; for other models use moil.backbones.from_model."
            )
        chosen = select_targets(model, family_patterns(self.qkv, self.mlp, targets, mlp), exclude)
        heads = list(spec.heads)
        for option, default in self.options.items():
            if options.get(option, default):
                heads += spec.optional.get(option, ())
        heads = select_params(model, tuple(heads) + tuple(trainable))
        return Backbone(
            model, chosen, heads, auto_sharing(chosen, self.sharing), spec.inputs, spec.outputs,
            dict(spec.passthrough),
        )

    def from_pretrained(
        self, path_or_id: str, task: str | None = None, *, targets: Patterns | None = None,
        mlp: bool = False, exclude: Patterns = (), trainable: Sequence[str] = (), **kwargs: Any,
    ) -> Backbone:
        """Load a checkpoint (a local folder or a hub id you have) as a task :class:`Backbone`.

        The family's :attr:`options` (``pooler=False``) and the named arguments are
        :meth:`build`'s; other ``kwargs`` go to the task class's ``from_pretrained``
        (e.g. ``num_labels=3129`` for VQA). A head absent from the checkpoint is newly
        initialised by transformers (it logs which).
        """
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in self.options}
        cls, folder = self.task(task).cls, local_path(str(path_or_id))
        if folder is not None and not folder.is_dir():
            raise ValueError(f"{self.name}.from_pretrained: {str(path_or_id)!r} is not a folder (from {Path.cwd()}); "
                             "give the folder model.save_pretrained(...) wrote, or a hub id 'owner/name'.")
        try:
            model = cls.from_pretrained(str(folder) if folder is not None else path_or_id, **kwargs).eval()
        except load_errors() as err:  # a local folder without config.json / weights, or a torn weights file
            if folder is None:
                raise  # a hub id: network, access and the hub's own errors as transformers raises them
            raise ValueError(f"{self.name}.from_pretrained: cannot load a {cls.__name__} from "
                             f"{str(path_or_id)!r} ({type(err).__name__}: {err}).") from err
        return self.build(
            model, targets, task=task, mlp=mlp, exclude=exclude, trainable=trainable, **options
        )

    def tiny(
        self, task: str | None = None, *, seed: int = 0, num_answers: int = 5, **overrides: Any
    ) -> nn.Module:
        """A small random-init task model in eval mode: :attr:`tiny_config`, then the task's
        fields (``num_labels = num_answers`` for answer tasks), then ``overrides``."""
        spec = self.task(task)
        config = copy.deepcopy({**self.tiny_config, **spec.tiny})
        if spec.answers:
            config["num_labels"] = num_answers
        config.update(overrides)
        return seeded(spec.cls, self.config(**config), seed)


def local_path(path_or_id: str) -> Path | None:
    """The local path ``path_or_id`` names, or ``None`` for a hub id: a path that exists, starts
    with ``.``, ``/`` or ``~``, or has two or more ``/``; anything else (``"owner/name"``, and a
    slash-less legacy id such as ``"bert-base-uncased"``) is a hub id."""
    path = Path(path_or_id).expanduser()
    if path.exists() or path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") > 1:
        return path
    return None


def load_errors() -> tuple[type[BaseException], ...]:
    """What ``from_pretrained`` raises for a local folder that is not a loadable checkpoint: a
    missing ``config.json`` / weights file (``OSError``), a torn one (safetensors'
    ``SafetensorError``, a truncated pickle's ``EOFError`` / ``UnpicklingError``). Not a
    ``RuntimeError`` (out of memory) or a ``ValueError`` (a bad keyword argument)."""
    import pickle

    from safetensors import SafetensorError

    return (OSError, EOFError, pickle.UnpicklingError, SafetensorError)


def get_family(name: str) -> Family:
    """The :class:`Family` named ``name`` (one of :data:`FAMILIES`), importing its module."""
    if name not in FAMILIES:
        raise ValueError(
            f"unknown backbone family {name!r}; moil builds {sorted(FAMILIES)} — for any other "
            "model use moil.backbones.from_model(model, targets, heads, ...)."
        )
    return importlib.import_module(FAMILIES[name]).FAMILY


def family_patterns(qkv: str, mlp_pattern: str, targets: Patterns | None, mlp: bool) -> Patterns:
    """A family's target patterns: ``qkv`` (plus ``mlp_pattern`` if ``mlp``) unless
    the user gave ``targets``."""
    if targets is None:
        return f"(?:{qkv})|(?:{mlp_pattern})" if mlp else qkv
    if mlp:
        raise ValueError(
            "pass either targets=... or mlp=True, not both: mlp=True adds the MLP linears to the "
            "default q/k/v targets; with your own targets, list the MLP layers in them."
        )
    return targets


def task_of(model: nn.Module, tasks: Mapping[str, Task], family: str) -> Task:
    """The first of ``tasks`` whose class ``model`` is (``isinstance``), or a clear error."""
    for spec in tasks.values():
        if isinstance(model, spec.cls):
            return spec
    names = list(dict.fromkeys(t.cls.__name__ for t in tasks.values()))
    raise TypeError(
        f"moil.backbones.{family}: got a {type(model).__name__}; supported task models are "
        f"{names}. For any other model use moil.backbones.from_model(model, targets, heads, ...)."
    )


def seeded(cls: type, config: Any, seed: int) -> nn.Module:
    """``cls(config)`` with weights drawn from ``torch.manual_seed(seed)``, in eval mode;
    the global RNG state is restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    return model.eval()
