"""Checks that a :class:`~moil.backbones.Backbone` keeps its contract — for tests and
for users wiring their own model through :func:`~moil.backbones.from_model`.

* :func:`snapshot` / :func:`assert_untouched` — the model is never mutated
  (values, storage, ``requires_grad`` and train/eval modes);
* :func:`reference_outputs` — what the backbone *should* return for given
  overrides, computed the slow way: a deep copy of the model with the overrides
  loaded by ``load_state_dict``, called directly;
* :func:`input_problem` / :func:`check_inputs` — token-index inputs of the right dtype and
  range for the model (a clear message instead of an embedding's IndexError), and
  :func:`layout_problem`: tensors, not lists; ``pixel_values`` float ``(B, C, H, W)`` with the
  model's channels; one batch size;
* :func:`record_inputs` — the input each linear layer received (to verify that a
  sharing group's members read one input).
"""

from __future__ import annotations

import copy
from typing import Callable, Mapping

import attrs
import torch
from torch import Tensor, nn

from moil.backbones.base import Backbone

__all__ = ["Snapshot", "assert_untouched", "check_inputs", "input_problem", "layout_problem", "pixel_problem",
           "record_inputs", "reference_outputs", "snapshot"]


@attrs.frozen(eq=False)
class Snapshot:
    """A model's tensors (cloned), their storage pointers, grad flags and module modes."""

    values: dict[str, Tensor]
    pointers: dict[str, int]
    requires_grad: dict[str, bool]
    training: dict[str, bool]


def snapshot(model: nn.Module) -> Snapshot:
    """Record everything :func:`assert_untouched` compares."""
    tensors = dict(model.state_dict(keep_vars=True))
    return Snapshot(
        values={k: v.detach().clone() for k, v in tensors.items()},
        pointers={k: v.data_ptr() for k, v in tensors.items()},
        requires_grad={n: p.requires_grad for n, p in model.named_parameters()},
        training={n: m.training for n, m in model.named_modules()},
    )


def assert_untouched(model: nn.Module, before: Snapshot) -> None:
    """Raise ``AssertionError`` naming the first difference from ``before``."""
    now = snapshot(model)
    if now.values.keys() != before.values.keys():
        raise AssertionError(f"state_dict keys changed: {sorted(now.values.keys() ^ before.values.keys())}")
    for k, v in before.values.items():
        if not torch.equal(now.values[k], v):
            raise AssertionError(f"{k!r} changed value")
        if now.pointers[k] != before.pointers[k]:
            raise AssertionError(f"{k!r} moved to new storage")
    if now.requires_grad != before.requires_grad:
        raise AssertionError("requires_grad flags changed")
    if now.training != before.training:
        raise AssertionError("a module's train/eval mode changed")


def reference_outputs(
    backbone: Backbone, overrides: Mapping[str, Tensor], batch: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Outputs of a deep copy of the model with ``overrides`` loaded into it.

    ``overrides`` use the backbone's keys (``"<target>.weight"``…); they are
    translated to the model's names and copied in with ``load_state_dict`` on the
    copy. The user's model is not touched.
    """
    model = copy.deepcopy(backbone.model)
    full = backbone.resolve(overrides)
    state = model.state_dict()
    # resolve() keys are the model's own names; the state_dict may list tied ones twice.
    changed = {k: full[k].detach() for k in state if k in full}
    model.load_state_dict({**state, **changed})
    with torch.no_grad():
        out = model(**backbone.inputs(batch))
    result = dict(backbone.outputs(out, batch))
    own = dict(model.named_parameters())
    for key, name in backbone.passthrough.items():
        result[key] = own[name].detach()
    return result


def record_inputs(
    model: nn.Module, names: list[str], run: Callable[[], object]
) -> dict[str, Tensor]:
    """``{name: first positional input}`` of the modules ``names`` during ``run()``.

    Hooks are registered on ``model`` and removed afterwards: pass a *copy* of the
    user's model. A module called twice keeps its first input.
    """
    seen: dict[str, Tensor] = {}
    modules = dict(model.named_modules())
    handles = []
    for name in names:
        def hook(module, args, name=name):
            seen.setdefault(name, args[0])
        handles.append(modules[name].register_forward_pre_hook(hook))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return seen


#: Batch keys that index an embedding table, and the config field giving its size.
_INDEX_KEYS = {"input_ids": "vocab_size", "token_type_ids": "type_vocab_size", "position_ids": "max_position_embeddings"}


def _config_value(model: nn.Module, field: str) -> int | None:
    config = getattr(model, "config", None)
    for cfg in (config, getattr(config, "text_config", None), getattr(config, "vision_config", None)):
        value = getattr(cfg, field, None)
        if isinstance(value, int):
            return value
    return None


def pixel_problem(batch: Mapping[str, Tensor]) -> str | None:
    """What is wrong with ``batch["pixel_values"]`` that its metadata shows (no device sync), or ``None``:
    integer pixels (raw 0–255 values: models read the image processor's normalised floats)."""
    pixels = batch.get("pixel_values")
    if isinstance(pixels, Tensor) and not pixels.is_floating_point():
        return (f"batch['pixel_values'] has dtype {pixels.dtype}: raw pixel values, but the model reads the "
                "image processor's normalised floats; pass processor(images=...)['pixel_values'] (float32).")
    return None


def layout_problem(model: nn.Module, batch: Mapping[str, Tensor]) -> str | None:
    """What is wrong with the types and shapes of ``batch`` for ``model``, or ``None``: a value
    that is not a tensor (a list of token ids), integer ``pixel_values``, ``pixel_values`` that
    are not ``(B, C, H, W)`` (or ``(B, N, C, H, W)`` for image pairs) with the model's
    ``num_channels``, or inputs whose batch sizes differ."""
    for key, value in batch.items():
        if isinstance(value, (list, tuple)) or (hasattr(value, "shape") and not isinstance(value, Tensor)):
            return (f"batch[{key!r}] is a {type(value).__name__}, not a torch.Tensor; tokenize / process with "
                    "return_tensors='pt', or convert with torch.as_tensor(...).")
    if (problem := pixel_problem(batch)) is not None:
        return problem
    pixels = batch.get("pixel_values")
    if isinstance(pixels, Tensor):
        channels = _config_value(model, "num_channels")
        if pixels.ndim not in (4, 5):
            return (f"batch['pixel_values'] has shape {tuple(pixels.shape)}, but images are (B, C, H, W) "
                    "(image pairs: (B, 2, C, H, W)); stack the images along a first batch dimension.")
        if channels is not None and pixels.shape[-3] != channels:
            return (f"batch['pixel_values'] has {pixels.shape[-3]} channel(s) (shape {tuple(pixels.shape)}), but "
                    f"the model's num_channels is {channels}; convert the images to RGB (PIL: "
                    "image.convert('RGB')) before the processor.")
    sizes = {k: v.shape[0] for k, v in batch.items() if isinstance(v, Tensor) and v.ndim and k in _BATCHED}
    if len(set(sizes.values())) > 1:
        return (f"batch inputs have different batch sizes {sizes}; every input needs one row per example "
                "(same first dimension).")
    return None


#: Inputs with one row per example in every model moil drives (labels included).
_BATCHED = frozenset({"input_ids", "attention_mask", "token_type_ids", "pixel_values", "pixel_mask"})


def input_problem(model: nn.Module, batch: Mapping[str, Tensor]) -> str | None:
    """What is wrong with the index inputs of ``batch`` for ``model``, or ``None``.

    ``input_ids`` / ``token_type_ids`` / ``position_ids`` ``(B, L)`` must be integer
    tensors with values in ``[0, size)``, ``size`` read from the model's config
    (``vocab_size``, ``type_vocab_size``, ``max_position_embeddings``; a dual encoder's
    ``text_config``). Used to turn an embedding's bare ``IndexError``/``RuntimeError``
    into a message naming the key, its dtype or range, and the table's size.
    """
    if (problem := layout_problem(model, batch)) is not None:
        return problem
    for key, field in _INDEX_KEYS.items():
        value = batch.get(key)
        if not isinstance(value, Tensor):
            continue
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            return (
                f"batch[{key!r}] has dtype {value.dtype}, but token indices must be integers (int64); "
                f"pass the tokenizer's output as is, or cast with batch[{key!r}].long()."
            )
        if value.numel() == 0:
            continue
        size = _config_value(model, field)
        low, high = int(value.min()), int(value.max())
        if low < 0 or (size is not None and high >= size):
            return (
                f"batch[{key!r}] holds values in [{low}, {high}], but the model's {field} is {size}: "
                f"indices must lie in [0, {size if size is not None else 'size'}). Tokenize with the "
                f"model's own tokenizer (same vocabulary), or build the model with {field} >= {high + 1}."
            )
    return None


def check_inputs(model: nn.Module, batch: Mapping[str, Tensor]) -> None:
    """Raise ``ValueError`` with :func:`input_problem`'s message when there is one."""
    problem = input_problem(model, batch)
    if problem is not None:
        raise ValueError(problem)
