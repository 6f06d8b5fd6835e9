"""``family = "generic"``: any transformers class from a folder, adapted by the config's patterns.

The config names the class and what to adapt (the :func:`moil.backbones.from_model` path)::

    [model]
    pretrained = "my-blip"
    family = "generic"
    model_class = "BlipForImageTextRetrieval"        # a name from `import transformers`
    targets = ["attention.self.query", "attention.self.value"]   # layer-name suffixes
    heads = ["itm_head"]                              # trained and stored with the student
    outputs = {itm_logits = "itm_score"}              # moil key = the model output's field

``outputs`` defaults to the convention ``{<task key> = "logits"}`` (:data:`TASK_KEYS`): a
class whose output has ``logits`` of shape ``(B, 2)`` (ITM, NLVR2) or ``(B, A)`` (VQA,
re-sized to the answer vocabulary with ``num_labels``) needs no mapping. The model's inputs
are the batch keys its ``forward`` names (the processor's ``input_ids``, ``pixel_values``, …).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from torch import Tensor

from moil.backbones import Backbone, from_model
from moil.backbones.family import load_errors
from moil.harness.config import ConfigError, ModelSpec

__all__ = ["GENERIC_TASKS", "TASK_KEYS", "FieldOutputs", "check_outputs", "load_generic", "model_class", "same_model_type"]

#: The output key each task's loss reads.
TASK_KEYS = {"itm": "itm_logits", "vqa": "vqa_logits", "nlvr2": "pair_logits"}
#: Config task → the task name a generic backbone serves (retrieval needs CLIP's logit scale).
GENERIC_TASKS = {t: t for t in TASK_KEYS}


@attrs.frozen
class FieldOutputs:
    """``(model output, batch) → {moil key: output field}``, e.g. ``{"itm_logits": "itm_score"}``."""

    fields: tuple[tuple[str, str], ...] = attrs.field(converter=lambda d: tuple(dict(d).items()))

    def __call__(self, out: Any, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        result = {}
        for key, field in self.fields:
            value = out.get(field) if hasattr(out, "get") else getattr(out, field, None)
            if value is None:
                have = list(out.keys()) if hasattr(out, "keys") else type(out).__name__
                raise ValueError(
                    f"[model] outputs: {key} = {field!r}, but the model's output has no {field!r} "
                    f"(it has {have}); set [model] outputs = {{{key} = \"<one of those>\"}}."
                )
            result[key] = value
        return result


def model_class(spec: ModelSpec) -> type:
    """The transformers class ``[model] model_class`` names: a model class, or an ``AutoModelFor…``
    class (which picks the folder's own architecture); not a tokenizer, processor or config."""
    import transformers
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    cls = getattr(transformers, spec.model_class, None)
    if not isinstance(cls, type) or not issubclass(cls, (transformers.PreTrainedModel, _BaseAutoModelClass)):
        raise ConfigError(
            f"model.model_class = {spec.model_class!r} is not a transformers model class; use a name "
            "from `import transformers` such as 'BlipForImageTextRetrieval' or 'ViltForQuestionAnswering'."
        )
    return cls


def same_model_type(cls: type, folder: str, spec: ModelSpec, chosen: str) -> None:
    """A class of another architecture than the folder's would load none of its weights (transformers
    only warns, and initialises them at random): refused, naming both."""
    import transformers

    try:
        saved = transformers.PretrainedConfig.get_config_dict(folder)[0].get("model_type")
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.pretrained = {spec.pretrained!r}: cannot read its config.json ({err}).") from None
    wanted = getattr(getattr(cls, "config_class", None), "model_type", "")
    if saved and wanted and saved != wanted:
        raise ConfigError(
            f"{chosen} loads a {wanted!r} model ({cls.__name__}), but model.pretrained = {spec.pretrained!r} "
            f"holds a {saved!r} model, so none of its weights would load; use family = 'auto', or a {saved!r} "
            f"class (one of transformers' {saved.title().replace('_', '')}For… classes)."
        )


def load_generic(spec: ModelSpec, folder: str, task: str, *, num_answers: int | None = None,
                 device: Any = "cpu") -> Backbone:
    """The :class:`~moil.backbones.Backbone` of ``model_class`` loaded from ``folder`` with the
    config's ``targets``/``heads`` and ``outputs`` (default ``{TASK_KEYS[task]: "logits"}``).

    Raises:
      ConfigError: an unknown class, a task generic backbones lack, ``outputs`` without the
        task's key, a folder the class cannot load, patterns matching nothing.
    """
    if task not in GENERIC_TASKS:
        raise ConfigError(
            f"train.tasks = [{task!r}]: family 'generic' runs {sorted(GENERIC_TASKS)}; for retrieval "
            "use a CLIP folder (family = 'auto')."
        )
    outputs = dict(spec.outputs) or {TASK_KEYS[task]: "logits"}
    if TASK_KEYS[task] not in outputs:
        raise ConfigError(
            f"model.outputs = {dict(spec.outputs)!r} lacks {TASK_KEYS[task]!r}, the key task {task!r} reads; "
            f"add it, e.g. outputs = {{{TASK_KEYS[task]} = \"logits\"}}."
        )
    cls = model_class(spec)
    same_model_type(cls, folder, spec, f"model.model_class = {spec.model_class!r}")
    kwargs: dict[str, Any] = {}
    if num_answers is not None:
        kwargs = {"num_labels": num_answers, "ignore_mismatched_sizes": True}
    try:
        model = cls.from_pretrained(folder, **kwargs)
    except (*load_errors(), TypeError, ValueError) as err:  # a torn weights file; an Auto class without
        # a class for the folder's model_type (ValueError: "Unrecognized configuration class")
        raise ConfigError(
            f"model.pretrained = {spec.pretrained!r}: {spec.model_class} cannot load it ({err})."
        ) from None
    try:
        return from_model(model.eval().to(device), list(spec.targets), list(spec.heads),
                          outputs=FieldOutputs(outputs))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"[model] targets/heads of {spec.model_class}: {err}") from None


def check_outputs(backbone: Backbone, data: Any, task: str, batch_size: int) -> None:
    """One forward on the first training batch, before any run folder is written: an
    ``outputs`` field the model lacks, or logits of the wrong shape, is named at entry.

    Raises:
      ConfigError: the field is missing; ``itm``/``nlvr2`` logits are not ``(B, 2)``.
    """
    import torch

    device = next(backbone.model.parameters()).device
    batch = data.train_stream(task, batch_size, 0, device)(0)
    try:
        with torch.no_grad():
            out = backbone({}, batch)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    key = TASK_KEYS[task]
    if task != "vqa" and (out[key].dim() != 2 or out[key].shape[1] != 2):
        raise ConfigError(
            f"model.outputs: {key} must be (batch, 2) logits for task {task!r}, but the model's field gives "
            f"shape {tuple(out[key].shape)}; map {key} to a 2-way output of {type(backbone.model).__name__}."
        )
