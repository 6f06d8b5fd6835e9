"""Export a merged model: the student folded into plain weights, zero overhead.

The result is an ordinary Hugging Face checkpoint: ``Model.from_pretrained(out_dir)``
loads it with no moil (and no PEFT) installed, and its forward equals
``torch.func.functional_call(model, tensors, batch)``.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from moil.export._fs import publish_dir

__all__ = ["export_merged", "merged_copy"]


def merged_copy(model: nn.Module, tensors: Mapping[str, Tensor]) -> nn.Module:
    """A deep copy of ``model`` whose parameters named in ``tensors`` are replaced.

    ``tensors`` maps parameter names (``"bert.encoder.layer.0.attention.self.query.weight"``)
    to values of the parameter's shape — typically ``adapter.merge(params, base)``
    plus the head parameters. Values are cast to each parameter's dtype and device.
    ``model`` and ``tensors`` are not modified.

    Raises:
      KeyError: a key is not a parameter of ``model``.
      ValueError: a value's shape differs from the parameter's, or a key is the
        bias of a bias-free layer (the approximation added a bias the plain
        architecture cannot hold).
    """
    named = dict(model.named_parameters(remove_duplicate=False))
    owner: dict[int, str] = {}
    for key, value in tensors.items():
        _check_key(model, named, key, value)
        first = owner.setdefault(id(named[key]), key)
        if first != key and not torch.equal(tensors[first], value):
            raise ValueError(
                f"export_merged: {first!r} and {key!r} are one tied parameter but tensors gives "
                "them different values; pass only one of them."
            )
    clone = copy.deepcopy(model)
    targets = dict(clone.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for key, value in tensors.items():
            param = targets[key]
            param.copy_(value.detach().to(dtype=param.dtype, device=param.device))
    return clone


def export_merged(
    model: nn.Module,
    tensors: Mapping[str, Tensor],
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` with ``tensors`` merged in as a Hugging Face checkpoint.

    ``model`` must be a ``transformers.PreTrainedModel`` (anything with
    ``save_pretrained``); it is deep-copied and never modified. The directory is
    written beside ``out_dir`` and renamed into place, so a crash leaves no half
    export; an existing non-empty ``out_dir`` is replaced only with
    ``overwrite=True`` and only if it holds a previous export (``config.json``).

    Args:
      model: the unmodified task model (e.g. ``Backbone.model``).
      tensors: effective parameters keyed by parameter name: merged target
        ``.weight``/``.bias`` and head parameters.
      out_dir: the directory to create.
      overwrite: replace a previous export in ``out_dir``.

    Returns:
      ``out_dir`` as a :class:`~pathlib.Path`.
    """
    if not callable(getattr(model, "save_pretrained", None)):
        raise TypeError(
            f"export_merged: {type(model).__name__} has no save_pretrained; pass a "
            "transformers PreTrainedModel, or save merged_copy(model, tensors).state_dict() "
            "with moil.checkpoint.save_checkpoint."
        )
    merged = merged_copy(model, tensors)

    def write(tmp: Path) -> None:
        kwargs = {}
        if "safe_serialization" in inspect.signature(merged.save_pretrained).parameters:
            kwargs["safe_serialization"] = True  # transformers 4.x; 5.x always writes safetensors
        merged.save_pretrained(tmp, **kwargs)
        if not any(tmp.glob("*.safetensors")):
            raise RuntimeError("export_merged: save_pretrained wrote no .safetensors file.")

    return publish_dir(
        out_dir, write, overwrite=overwrite, marker="config.json", kind="merged export"
    )


def _check_key(
    model: nn.Module, named: Mapping[str, nn.Parameter], key: str, value: Tensor
) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(
            f"export_merged: tensors[{key!r}] is a {type(value).__name__}, not a tensor."
        )
    if key in named:
        want = tuple(named[key].shape)
        if tuple(value.shape) != want:
            raise ValueError(
                f"export_merged: tensors[{key!r}] has shape {tuple(value.shape)} but the model's "
                f"parameter has shape {want}; the tensors were made for another model or config."
            )
        return
    module_path, _, leaf = key.rpartition(".")
    module = _get_module(model, module_path)
    if leaf == "bias" and isinstance(module, nn.Module) and f"{key[:-4]}weight" in named:
        raise ValueError(
            f"export_merged: {key!r} is a bias for the bias-free layer {module_path!r}: the "
            "approximation (e.g. Transform or Hybrid on a layer built with bias=False) added a "
            "bias that the plain architecture cannot hold. Export with save_student instead, or "
            "use a model config whose layer has a bias."
        )
    if key in dict(model.named_buffers()):
        raise KeyError(f"export_merged: {key!r} is a buffer; export_merged writes parameters only.")
    hint = difflib.get_close_matches(key, list(named), n=3)
    raise KeyError(
        f"export_merged: {key!r} is not a parameter of {type(model).__name__}"
        + (f"; did you mean {hint}?" if hint else "; check the target and head names.")
    )


def _get_module(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path) if path else model
    except AttributeError:
        return None
