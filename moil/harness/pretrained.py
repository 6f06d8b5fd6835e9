"""A ``save_pretrained`` folder → family → task :class:`~moil.backbones.Backbone` and processor.

``[model] pretrained = "folder"`` with ``family = "auto"`` reads the folder's
``config.json`` (``model_type``: ``vilt``, ``clip``, ``bridgetower``, ``visual_bert``) and loads the
family's class for the run's task (:data:`FAMILY_TASKS`, e.g. ``retrieval`` on CLIP is
its ``contrastive`` task) with :meth:`moil.backbones.Family.build`: the family's q/k/v
targets unless ``[model] targets`` lists patterns, its task head plus ``[model] heads``.
The processor (tokenizer + image processor) comes from the same folder; VisualBERT reads
visual features, so its processor is the folder's tokenizer plus a visual source
(:mod:`moil.harness.data.visual_inputs`). ``family = "generic"`` loads ``[model] model_class``
with the config's patterns (:mod:`moil.harness.generic`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moil.backbones import Backbone, get_family
from moil.backbones.family import load_errors, local_path
from moil.harness.config import ConfigError, ModelSpec

__all__ = ["FAMILY_TASKS", "MODEL_TYPES", "family_of", "family_task", "load_backbone", "load_processor"]

#: ``config.model_type`` → moil family.
MODEL_TYPES = {"vilt": "vilt", "clip": "clip", "bridgetower": "bridgetower", "visual_bert": "visualbert"}
#: Family → {config task: the family's task}: the tasks a config may run on each family.
FAMILY_TASKS = {
    "vilt": {"itm": "itm", "vqa": "vqa", "nlvr2": "nlvr2"},
    "visualbert": {"itm": "itm", "vqa": "vqa", "nlvr2": "nlvr2"},
    "generic": {"itm": "itm", "vqa": "vqa", "nlvr2": "nlvr2"},
    "clip": {"retrieval": "contrastive"},
    # BridgeTowerForContrastiveLearning needs config fields (contrastive_hidden_size) an ITM
    # checkpoint lacks: its contrastive task stays in Python (moil.backbones.bridgetower).
    "bridgetower": {"itm": "itm"},
}


def _folder(spec: ModelSpec) -> str:
    path = spec.pretrained
    if path is None:
        raise ConfigError("model.pretrained is not set; give the save_pretrained folder of your model.")
    folder = local_path(path)
    # A hub id only from the local cache: runs are offline, and a mistyped folder name must
    # not turn into minutes of download retries.
    if (folder is not None and not folder.is_dir()) or (folder is None and not _cached(path)):
        raise ConfigError(
            f"model.pretrained = {path!r}: no such folder (from {Path.cwd()})"
            + ("" if folder is not None else ", and no hub model of that id in the local cache")
            + "; give the folder model.save_pretrained(...) and processor.save_pretrained(...) wrote."
        )
    return str(folder) if folder is not None else path


def _cached(repo_id: str) -> bool:
    """Whether the hub model ``repo_id`` has a ``config.json`` in the local cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id either (HFValidationError)
        return False


def family_of(spec: ModelSpec) -> str:
    """The family ``spec`` names, reading ``config.model_type`` for ``family = "auto"``."""
    if spec.family != "auto":
        return spec.family
    from transformers import AutoConfig

    folder = _folder(spec)
    try:
        model_type = AutoConfig.from_pretrained(folder).model_type
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.pretrained = {spec.pretrained!r}: cannot read its config.json ({err}).") from None
    if model_type not in MODEL_TYPES:
        raise ConfigError(
            f"model.pretrained = {spec.pretrained!r} is a {model_type!r} model; family = 'auto' knows "
            f"{sorted(MODEL_TYPES)} — set model.family explicitly, or family = 'generic' with model_class and targets."
        )
    return MODEL_TYPES[model_type]


def family_task(family: str, task: str) -> str:
    """The family's own name for the config task ``task``, or a named error."""
    tasks = FAMILY_TASKS[family]
    if task not in tasks:
        raise ConfigError(
            f"train.tasks = [{task!r}]: family {family!r} has no {task!r} task; it runs {sorted(tasks)} — "
            f"set train.tasks to one of them (or --task)."
        )
    return tasks[task]


def load_backbone(spec: ModelSpec, task: str, *, num_answers: int | None = None, device: Any = "cpu") -> Backbone:
    """The task backbone of the folder ``spec.pretrained``.

    Args:
      spec: the ``[model]`` section (``pretrained``, ``family``, ``targets``, ``heads``, ``mlp``).
      task: ``itm``, ``vqa`` or ``retrieval``.
      num_answers: the answer vocabulary's size (VQA): the classifier gets that many
        outputs (re-initialised when the folder's head has another size).
      device: where the model goes.

    Raises:
      ConfigError: no such folder, an unknown ``model_type``, a task the family lacks.
    """
    family = family_of(spec)
    name = family_task(family, task)
    if family == "generic":
        from moil.harness.generic import load_generic

        return load_generic(spec, _folder(spec), name, num_answers=num_answers, device=device)
    fam = get_family(family)
    kwargs: dict[str, Any] = {}
    if num_answers is not None:
        kwargs = {"num_labels": num_answers, "ignore_mismatched_sizes": True}
    folder = _folder(spec)
    if spec.family != "auto":  # an explicit family on another architecture's folder would load no weights
        from moil.harness.generic import same_model_type

        same_model_type(fam.task(name).cls, folder, spec, f"model.family = {spec.family!r}")
    try:
        model = fam.task(name).cls.from_pretrained(folder, **kwargs)
    except load_errors() as err:  # also a truncated weights file (SafetensorError)
        raise ConfigError(f"model.pretrained = {spec.pretrained!r}: cannot load a {family} model ({err}).") from None
    targets = list(spec.targets) or None
    try:
        return fam.build(model.eval().to(device), targets, task=name, mlp=spec.mlp, trainable=tuple(spec.heads))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"[model] targets/heads/mlp: {err}") from None


def load_processor(spec: ModelSpec, features: str | None = None) -> Any:
    """The processor saved with the model (``AutoProcessor.from_pretrained(folder)``); for VisualBERT,
    or any model reading the feature column ``features``, the folder's tokenizer with that visual
    source (:func:`~moil.harness.data.visual_inputs.visual_processor`)."""
    from transformers import AutoProcessor

    folder = _folder(spec)
    if family_of(spec) == "visualbert" or features is not None:
        from moil.harness.data.visual_inputs import visual_processor

        return visual_processor(spec, folder, features)
    try:
        processor = AutoProcessor.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(
            f"model.pretrained = {spec.pretrained!r}: no processor in it ({err}); save one there with "
            "processor.save_pretrained(folder) (a tokenizer and an image processor)."
        ) from None
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise ConfigError(
            f"model.pretrained = {spec.pretrained!r}: its processor {type(processor).__name__} lacks a "
            "tokenizer or an image processor; save the model's full processor (e.g. ViltProcessor)."
        )
    return processor
