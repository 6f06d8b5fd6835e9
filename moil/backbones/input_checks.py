"""What is wrong with a batch for a model, said in words — read only when a forward fails
(and :func:`pixel_problem` before it, from metadata alone).

* :func:`pixel_problem` — integer ``pixel_values`` (raw 0–255 values);
* :func:`layout_problem` — a value that is not a tensor (a list of token ids); ``pixel_values``
  images ``(B, C, H, W)`` without the model's channels, or of 1 or 3 dimensions; text inputs
  whose batch sizes differ;
* :func:`input_problem` / :func:`check_inputs` — token-index inputs of the right dtype and range
  for the model (a clear message instead of an embedding's IndexError).

A leaf module (torch only): :mod:`moil.backbones.base` imports it at module level.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

__all__ = ["check_inputs", "input_problem", "layout_problem", "pixel_problem"]

#: Batch keys that index an embedding table, and the config field giving its size.
_INDEX_KEYS = {"input_ids": "vocab_size", "token_type_ids": "type_vocab_size", "position_ids": "max_position_embeddings"}
#: Text inputs: one row per example in every model. Images are not compared with them: a
#: retrieval batch (CLIP, BridgeTower) holds N texts and M images, a Qwen2-VL-style processor
#: flattens the patches of all images into a 2-D ``pixel_values``.
_TEXT = ("input_ids", "attention_mask", "token_type_ids")


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
    """What is wrong with the types and shapes of ``batch`` for ``model``, or ``None``.

    Refused: a value that is not a tensor (a list of token ids); integer ``pixel_values``;
    ``pixel_values`` of 0, 1 or 3 dimensions (3: one image without its batch dimension);
    images ``(B, C, H, W)`` (or ``(B, N, C, H, W)`` for image pairs) whose ``C`` is not the
    model's ``num_channels``; text inputs (``input_ids``, ``attention_mask``,
    ``token_type_ids``) whose batch sizes differ. Accepted: 2-D ``pixel_values`` (flattened
    patches) and image batches of another size than the text's (retrieval).
    """
    for key, value in batch.items():
        if isinstance(value, (list, tuple)) or (hasattr(value, "shape") and not isinstance(value, Tensor)):
            return (f"batch[{key!r}] is a {type(value).__name__}, not a torch.Tensor; tokenize / process with "
                    "return_tensors='pt', or convert with torch.as_tensor(...).")
    if (problem := pixel_problem(batch)) is not None:
        return problem
    pixels = batch.get("pixel_values")
    if isinstance(pixels, Tensor):
        if pixels.ndim < 2 or pixels.ndim == 3:
            return (f"batch['pixel_values'] has shape {tuple(pixels.shape)}, but images are (B, C, H, W) "
                    "(image pairs: (B, 2, C, H, W)); stack the images along a first batch dimension.")
        channels = _config_value(model, "num_channels")
        if pixels.ndim >= 4 and channels is not None and pixels.shape[-3] != channels:
            return (f"batch['pixel_values'] has {pixels.shape[-3]} channel(s) (shape {tuple(pixels.shape)}), but "
                    f"the model's num_channels is {channels}; convert the images to RGB (PIL: "
                    "image.convert('RGB')) before the processor.")
    sizes = {k: batch[k].shape[0] for k in _TEXT if isinstance(batch.get(k), Tensor) and batch[k].ndim}
    if len(set(sizes.values())) > 1:
        return (f"batch text inputs have different batch sizes {sizes}; every text input needs one row per "
                "example (same first dimension).")
    return None


def input_problem(model: nn.Module, batch: Mapping[str, Tensor]) -> str | None:
    """What is wrong with the inputs ``batch`` gives ``model``, or ``None``: first
    :func:`layout_problem`, then the index inputs.

    ``input_ids`` / ``token_type_ids`` / ``position_ids`` ``(B, L)`` must be integer
    tensors with values in ``[0, size)``, ``size`` read from the model's config
    (``vocab_size``, ``type_vocab_size``, ``max_position_embeddings``; a dual encoder's
    ``text_config``). Used to turn an embedding's bare ``IndexError``/``RuntimeError``
    into a message naming the key, its dtype or range, and the table's size. Pass only
    what the model receives (``backbone.inputs(batch)``): a key it never reads cannot be
    the cause of its error.
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
