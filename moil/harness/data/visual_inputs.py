"""A processor for two-stage models (VisualBERT): the folder's tokenizer plus visual features.

VisualBERT reads ``visual_embeds`` ``(B, T, D)`` — features of a frozen detector or CNN —
instead of pixels. :class:`VisualProcessor` is called like a transformers processor
(``processor(images=…, text=…)``) and returns the tokenizer's keys plus ``visual_embeds``,
``visual_attention_mask`` and ``visual_token_type_ids`` ``(B, T)``. The visual source is either

* a feature column already in the dataset (``[data.columns] features``): each cell a
  ``(T, D)`` nested list, array, or the path of a ``.npy`` file (relative to the split); or
* the demo's frozen EfficientNet-Lite0 grid (:class:`EfficientNetLite0Grid`, ``D = 320``,
  ``T = 16`` at 112 px) over the image column, each image read as grey levels.

The folder's ``visual_embedding_dim`` must be ``D``; :func:`visual_processor` checks it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor

from moil.harness.config import ConfigError
from moil.harness.data.visual_features import EfficientNetLite0Grid

__all__ = ["BOX_SLACK", "VisualProcessor", "check_features", "check_width", "feature_tensor", "visual_processor",
           "with_boxes"]


def feature_tensor(cell: Any, where: str, root: Path | None = None) -> Tensor:
    """A ``(T, D)`` float32 tensor from a feature cell (nested list, array, or ``.npy`` path)."""
    if isinstance(cell, str):
        path = Path(cell) if root is None or Path(cell).is_absolute() else root / cell
        try:
            cell = np.load(path)
        except (OSError, ValueError) as err:
            raise ConfigError(f"{where}: feature file {str(path)!r} does not load ({err}).") from None
    try:
        x = torch.as_tensor(np.asarray(cell, dtype=np.float32))
    except (TypeError, ValueError) as err:  # ragged rows, text, None
        raise ConfigError(f"{where}: a feature cell is not a (tokens, dim) array of numbers ({err}); store one "
                          "(T, D) array per row in [data.columns] features.") from None
    if x.dim() != 2:
        raise ConfigError(
            f"{where}: a feature cell must be (tokens, dim), got shape {tuple(x.shape)}; store one "
            "(T, D) array per row in [data.columns] features."
        )
    if not bool(torch.isfinite(x).all()):
        raise ConfigError(f"{where}: a feature cell holds NaN or inf; fix the features of that row (or remove it).")
    return x


def check_features(rows: Any, features: str, boxes: str | None, where: str, root: Path, dim: int | None) -> None:
    """Every row's feature cell, before training: a ``(T, D)`` array of finite numbers with one
    shape for all rows (a batch stacks them), ``D = dim`` (with ``boxes``: ``dim - 6``), and its
    boxes; a ``.npy`` path must name a file (it is loaded only when its batch is made).

    Raises:
      ConfigError: naming the row, what is wrong and the fix.
    """
    shape = None
    columns = [features] + ([boxes] if boxes is not None else [])
    for start, chunk in enumerate(rows.select_columns(columns).iter(batch_size=256)):
        for i, cell in enumerate(chunk[features], start=256 * start):
            at = f"{where} row {i}"
            if isinstance(cell, str):
                if not (Path(cell) if Path(cell).is_absolute() else root / cell).is_file():
                    raise ConfigError(f"{at}: feature file {cell!r} does not exist (relative to {str(root)!r}).")
                continue
            x = feature_tensor(cell, at)
            if boxes is not None:
                x = with_boxes(x, chunk[boxes][i - 256 * start], at)
            check_width(x.shape[1], dim, at, boxes=boxes is not None)
            if shape not in (None, tuple(x.shape)):
                raise ConfigError(f"{at}: features of shape {tuple(x.shape)}, but earlier rows have {shape}; a batch "
                                  "stacks its rows, so store every row with one (tokens, dim) shape (pad the tokens).")
            shape = tuple(x.shape)


def check_width(width: int, dim: int | None, where: str, *, boxes: bool = False) -> None:
    """Refuse features of ``width`` for a model reading ``visual_embedding_dim = dim`` (``None``: not
    known, not checked); with ``boxes``, 6 of the width are :func:`with_boxes`' box values."""
    if dim is None or width == dim:
        return
    given = f"{width - 6} + 6 box values = {width}" if boxes else f"{width}"
    raise ConfigError(f"{where}: features of width {given}, but the model reads visual_embedding_dim = {dim}; "
                      f"store features of width {dim - 6 if boxes else dim}, or use a model of width {width}.")


#: How far outside [0, 1] a box corner may lie and still be read (clamped) as a fraction: float
#: rounding of x / width gives 1.0000001, a box in pixels gives 16.
BOX_SLACK = 1e-3


def with_boxes(features: Tensor, boxes: Any, where: str) -> Tensor:
    """VinVL/Oscar region input: ``(T, D)`` features ++ ``[x1, y1, x2, y2, w, h]`` → ``(T, D + 6)``.

    ``boxes`` ``(T, 4)``: corners in [0, 1] of the image (within :data:`BOX_SLACK` of it: clamped
    into it, in-range values unchanged); ``w = x2 - x1``, ``h = y2 - y1``.
    """
    try:
        b = torch.as_tensor(np.asarray(boxes, dtype=np.float32))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: a [data.columns] boxes cell is not a (tokens, 4) array ({err}).") from None
    if b.shape != (features.shape[0], 4):
        raise ConfigError(
            f"{where}: [data.columns] boxes must be (tokens, 4) = ({features.shape[0]}, 4) to match the "
            f"features, got {tuple(b.shape)}; store x1, y1, x2, y2 per region."
        )
    if not (bool(torch.isfinite(b).all()) and b.min() >= -BOX_SLACK and b.max() <= 1 + BOX_SLACK
            and bool((b[:, 2] >= b[:, 0]).all()) and bool((b[:, 3] >= b[:, 1]).all())):
        raise ConfigError(
            f"{where}: [data.columns] boxes must be corners x1 <= x2, y1 <= y2 in [0, 1] (fractions of the "
            f"image), got values in [{float(b.min())}, {float(b.max())}]; divide pixel boxes by the image's "
            "width and height."
        )
    b = b.clamp(0.0, 1.0)
    return torch.cat([features, b, b[:, 2:3] - b[:, 0:1], b[:, 3:4] - b[:, 1:2]], dim=1)


@attrs.frozen
class VisualProcessor:
    """``processor(images, text)`` for VisualBERT: tokens plus ``visual_embeds`` ``(B, T, D)``.

    Attributes:
      tokenizer: the folder's tokenizer.
      extractor: the grid extractor over decoded images, or ``None`` when ``images`` are
        already feature tensors ``(T, D)`` (from a feature column).
    """

    tokenizer: Any
    extractor: EfficientNetLite0Grid | None = None
    #: The model's ``visual_embedding_dim`` (checked against every batch's ``D``).
    dim: int | None = None
    _model: dict = attrs.field(factory=dict, init=False, eq=False, repr=False)

    def visual(self, images: list) -> Tensor:
        """``(B, T, D)`` features of ``images`` (PIL images, or ``(T, D)`` tensors)."""
        if self.extractor is None:
            shapes = {tuple(x.shape) for x in images}
            if len(shapes) != 1:
                raise ConfigError(f"[data.columns] features: rows of one batch have shapes {sorted(shapes)}; "
                                  "store features of one (tokens, dim) shape.")
            check_width(next(iter(shapes))[1], self.dim, "[data.columns] features")
            return torch.stack(list(images))
        if "net" not in self._model:
            self._model["net"] = self.extractor.build_model()
        side = self.extractor.resolution
        grey = [np.asarray(im.convert("L").resize((side, side))) for im in images]
        return self.extractor(torch.from_numpy(np.stack(grey)), self._model["net"])

    def __call__(self, images: list, text: list[str], **kwargs: Any) -> dict[str, Tensor]:
        kwargs.setdefault("return_tensors", "pt")
        enc = dict(self.tokenizer(text, **kwargs))
        visual = self.visual(images)
        mask = torch.ones(visual.shape[:2], dtype=torch.int64)
        return enc | {"visual_embeds": visual, "visual_attention_mask": mask, "visual_token_type_ids": mask}

    def save_pretrained(self, folder: str | Path) -> None:
        """Save the tokenizer (what a VisualBERT folder holds besides the model)."""
        self.tokenizer.save_pretrained(folder)


def visual_processor(spec: Any, folder: str, features: str | None) -> VisualProcessor:
    """The folder's tokenizer with a feature column (``features`` set) or the EfficientNet grid.

    Raises:
      ConfigError: no tokenizer in the folder; the grid's width differs from the folder's
        ``visual_embedding_dim``.
    """
    from transformers import AutoConfig, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(
            f"model.pretrained = {spec.pretrained!r}: no tokenizer in it ({err}); save one there with "
            "tokenizer.save_pretrained(folder)."
        ) from None
    dim = getattr(AutoConfig.from_pretrained(folder), "visual_embedding_dim", None)
    if features is not None:
        return VisualProcessor(tokenizer, dim=dim)
    extractor = EfficientNetLite0Grid()
    if dim != extractor.feature_dim:
        raise ConfigError(
            f"model.pretrained = {spec.pretrained!r} reads visual_embeds of width {dim}, but the "
            f"EfficientNet-Lite0 grid gives {extractor.feature_dim}; set [data.columns] features to a "
            f"column of (tokens, {dim}) features, or use a model with visual_embedding_dim = {extractor.feature_dim}."
        )
    return VisualProcessor(tokenizer, extractor, dim)
