r"""Task losses for vision-language fine-tuning, as small immutable components.

Each loss is an ``attrs.frozen`` class whose fields name the dict keys it reads;
calling it is a pure function ``loss(outputs, batch) -> 0-dim Tensor``, where
``outputs`` is the backbone's output dict and ``batch`` the data dict (a key is
looked up in ``outputs`` first, then in ``batch``). The defaults match the keys
the ``moil.backbones`` heads produce. Inputs are validated where they enter:
errors name the key, the bad shape/dtype/value and the fix.

In the MoIL recipe the task loss flows through the teacher (full-rank copy of
the target weights) and the task heads only (METHOD.md, "The mechanism").
"""

from __future__ import annotations

import math
from typing import Mapping

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ImageTextMatching", "ContrastiveRetrieval", "VQAScore", "PairClassification"]


def lookup(
    owner: str, field: str, key: str, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]
) -> Tensor:
    """``outputs[key]`` if present, else ``batch[key]``; a KeyError lists what exists."""
    if key in outputs:
        return outputs[key]
    if key in batch:
        return batch[key]
    raise KeyError(
        f"{owner}: key {key!r} (field {field!r}) is in neither outputs (keys {sorted(outputs)}) "
        f"nor batch (keys {sorted(batch)}); name the right key with {owner}({field}='<key>')."
    )


def check_logits(owner: str, key: str, logits: Tensor, classes: int | None = None) -> None:
    """Raise unless ``logits`` is a floating ``(B, C)`` tensor (``C == classes`` if given)."""
    if logits.ndim != 2 or (classes is not None and logits.shape[1] != classes):
        want = f"(B, {classes})" if classes is not None else "(B, C)"
        raise ValueError(f"{owner}: {key!r} must have shape {want}, got {tuple(logits.shape)}.")
    if logits.shape[0] == 0:
        raise ValueError(
            f"{owner}: {key!r} has batch size 0; a mean over no examples is undefined."
        )
    if not logits.is_floating_point():
        raise TypeError(
            f"{owner}: {key!r} must be floating-point logits, got dtype {logits.dtype}."
        )


def scored(
    owner: str, logits: str, field: str, key: str, outputs: Mapping[str, Tensor],
    batch: Mapping[str, Tensor], classes: int | None = None,
) -> tuple[Tensor, Tensor]:
    """``(z, y)``: the logits under ``logits`` (checked ``(B, C)``, see :func:`check_logits`)
    and what they are scored against, under ``key`` (the loss's field ``field``)."""
    z = lookup(owner, "logits", logits, outputs, batch)
    y = lookup(owner, field, key, outputs, batch)
    check_logits(owner, logits, z, classes=classes)
    return z, y


def check_labels(owner: str, key: str, labels: Tensor, batch_size: int, classes: int) -> None:
    """Raise unless ``labels`` is an integer ``(B,)`` tensor with values in ``[0, classes)``."""
    if labels.shape != (batch_size,):
        raise ValueError(
            f"{owner}: {key!r} must have shape (B,)=({batch_size},) to match the logits, got "
            f"{tuple(labels.shape)}; pass class indices, not one-hot vectors."
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(
            f"{owner}: {key!r} must be integer class indices, got dtype {labels.dtype}; "
            "use .long()."
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(
            f"{owner}: {key!r} holds values in [{int(labels.min())}, {int(labels.max())}] but "
            f"must be in [0, {classes - 1}] for {classes} classes."
        )


@attrs.frozen
class ImageTextMatching:
    r"""Image–text matching: 2-way cross-entropy, ``−mean_b log softmax(z_b)[y_b]``.

    ViLT's ITM objective (Kim et al., 2021): class 1 = the pair matches.

    Args:
      logits: key of ``(B, 2)`` floating logits.
      labels: key of ``(B,)`` integer labels in ``{0, 1}``.

    Returns (on call):
      0-dim loss; uniform logits give ``log 2``.
    """

    logits: str = "itm_logits"
    labels: str = "itm_labels"

    def __call__(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> Tensor:
        z, y = scored("ImageTextMatching", self.logits, "labels", self.labels, outputs, batch, 2)
        check_labels("ImageTextMatching", self.labels, y, z.shape[0], 2)
        return F.cross_entropy(z, y.long())


@attrs.frozen
class PairClassification:
    r"""Classification of an image pair with a sentence (NLVR2): ``C``-way cross-entropy.

    ``−mean_b log softmax(z_b)[y_b]`` on ``(B, C)`` logits (ViLT's NLVR2 head, ``C = 2``).

    Args:
      logits: key of ``(B, C)`` floating logits, ``C ≥ 2``.
      labels: key of ``(B,)`` integer labels in ``[0, C)``.
    """

    logits: str = "pair_logits"
    labels: str = "pair_labels"

    def __call__(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> Tensor:
        z, y = scored("PairClassification", self.logits, "labels", self.labels, outputs, batch)
        if z.shape[1] < 2:
            raise ValueError(
                f"PairClassification: {self.logits!r} needs C >= 2 classes, got shape "
                f"{tuple(z.shape)}."
            )
        check_labels("PairClassification", self.labels, y, z.shape[0], z.shape[1])
        return F.cross_entropy(z, y.long())


@attrs.frozen
class VQAScore:
    r"""VQA soft-score loss: binary cross-entropy with logits, times the answer count.

    .. math::
        \mathcal L = A \cdot \frac{1}{B A} \sum_{b,a} \mathrm{BCE}(z_{ba}, t_{ba})

    with soft targets ``t ∈ [0, 1]`` (VQAv2's ``min(1, #humans/3)``); scaling the
    mean by ``A`` is ViLT's convention (Kim et al., 2021, ``vqa_targets.shape[1]``),
    i.e. a per-question sum over answers.

    Args:
      logits: key of ``(B, A)`` floating logits.
      targets: key of ``(B, A)`` floating soft scores in ``[0, 1]``.
    """

    logits: str = "vqa_logits"
    targets: str = "vqa_targets"

    def __call__(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> Tensor:
        z, t = scored("VQAScore", self.logits, "targets", self.targets, outputs, batch)
        if t.shape != z.shape:
            raise ValueError(
                f"VQAScore: {self.targets!r} must have the logits' shape (B, A)={tuple(z.shape)}, "
                f"got {tuple(t.shape)}; give one soft score per candidate answer."
            )
        if not t.is_floating_point():
            raise TypeError(
                f"VQAScore: {self.targets!r} must be floating soft scores, got {t.dtype}; "
                "use .float()."
            )
        if t.numel() and (t.min() < 0 or t.max() > 1):
            raise ValueError(
                f"VQAScore: {self.targets!r} must lie in [0, 1], got values in "
                f"[{float(t.min())}, {float(t.max())}]."
            )
        return F.binary_cross_entropy_with_logits(z, t.to(z.dtype)) * z.shape[1]


def _positive_finite(instance, attribute, value) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(
            f"{type(instance).__name__}: {attribute.name} must be a finite number > 0, got "
            f"{attribute.name}={value!r}; CLIP uses 0.07 (logit scale 1/0.07)."
        )


@attrs.frozen
class ContrastiveRetrieval:
    r"""Symmetric InfoNCE over a batch of matching image–text pairs (CLIP).

    With L2-normalised embeddings ``Ĩ, T̃`` ``(B, E)`` and scale ``s``:

    .. math::
        Z = s\,\tilde I \tilde T^\top, \qquad
        \mathcal L = \tfrac12\big(\mathrm{CE}(Z, \mathrm{diag})
          + \mathrm{CE}(Z^\top, \mathrm{diag})\big)

    where pair ``b`` is the positive for row/column ``b`` (Radford et al., 2021).
    ``s = 1/temperature``, or ``exp(outputs[learnable_logit_scale])`` when that
    key is given (CLIP stores the log scale).

    Args:
      image: key of ``(B, E)`` image embeddings.
      text: key of ``(B, E)`` text embeddings.
      temperature: ``τ > 0``, used when ``learnable_logit_scale`` is ``None``.
      learnable_logit_scale: key of a 1-element tensor ``log s``, or ``None``.
    """

    image: str = "image_embeds"
    text: str = "text_embeds"
    temperature: float = attrs.field(default=0.07, validator=_positive_finite)
    learnable_logit_scale: str | None = None

    def __call__(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> Tensor:
        owner = "ContrastiveRetrieval"
        img = lookup(owner, "image", self.image, outputs, batch)
        txt = lookup(owner, "text", self.text, outputs, batch)
        for key, e in ((self.image, img), (self.text, txt)):
            if e.ndim != 2 or not e.is_floating_point() or e.shape[0] == 0:
                raise ValueError(
                    f"{owner}: {key!r} must be floating (B, E) embeddings with B >= 1, got "
                    f"{tuple(e.shape)} {e.dtype}."
                )
        if img.shape != txt.shape:
            raise ValueError(
                f"{owner}: {self.image!r} {tuple(img.shape)} and {self.text!r} {tuple(txt.shape)} "
                "must have the same (B, E): row b of each is one matching pair; project both "
                "to the shared embedding width."
            )
        if self.learnable_logit_scale is None:
            scale = torch.as_tensor(1.0 / self.temperature, dtype=img.dtype, device=img.device)
        else:
            log_scale = lookup(
                owner, "learnable_logit_scale", self.learnable_logit_scale, outputs, batch
            )
            if log_scale.numel() != 1:
                raise ValueError(
                    f"{owner}: {self.learnable_logit_scale!r} must hold one number (log scale), "
                    f"got shape {tuple(log_scale.shape)}."
                )
            scale = log_scale.reshape(()).exp()
        logits = scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).mT
        diag = torch.arange(img.shape[0], device=img.device)
        return (F.cross_entropy(logits, diag) + F.cross_entropy(logits.mT, diag)) / 2
