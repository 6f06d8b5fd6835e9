"""Deterministic batches for the two demo tasks, as plain ``dict[str, Tensor]``.

* **Image–text matching (ITM)** — every image appears twice per epoch: with a caption of its
  own class (``itm_labels = 1``) and with a caption of a different class drawn uniformly
  (``itm_labels = 0``); templates are drawn uniformly from the split's templates. Rows
  ``2i`` / ``2i + 1`` are image ``i``'s positive / negative, so every batch is exactly
  balanced.
* **VQA** — every image appears once per epoch with one question; question families are
  assigned in equal numbers (``arange(N) % F``, shuffled), phrasings uniformly. Targets are
  VQA-style soft scores ``(B, A)``: 1.0 on the correct answer, 0 elsewhere (the format a
  soft binary-cross-entropy head consumes).

All randomness of an epoch is drawn from the generator **when the function is called**, so
the batches depend only on the generator's state then, not on what else uses it while the
epoch is consumed. Same seed → same batches.

Common keys: ``input_ids``, ``attention_mask``, ``token_type_ids`` ``(B, L)`` int64
(``L`` = longest sentence in the batch), ``visual_embeds`` ``(B, T, D)`` float32,
``visual_attention_mask`` ``(B, T)`` int64 ones, ``labels`` ``(B,)`` int64 image class,
``image_index`` ``(B,)`` int64 row of the image in the split.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from moil.harness.data._checks import check_positive_int
from moil.harness.data.text import CaptionBank, QuestionBank

__all__ = ["as_generator", "itm_batches", "vqa_batches"]


def as_generator(seed: int | torch.Generator) -> torch.Generator:
    """A CPU ``torch.Generator``: the one given, or a new one seeded with ``seed``."""
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or a torch.Generator, got {type(seed).__name__}.")
    return torch.Generator().manual_seed(seed)


def _check_inputs(visual_embeds: Tensor, labels: Tensor, num_classes: int) -> None:
    if visual_embeds.dim() != 3 or not visual_embeds.is_floating_point():
        raise ValueError(
            f"visual_embeds must be (N, T, D) float, got shape {tuple(visual_embeds.shape)} "
            f"dtype {visual_embeds.dtype}."
        )
    n = visual_embeds.shape[0]
    if labels.shape != (n,) or labels.dtype != torch.int64:
        raise ValueError(
            f"labels must be ({n},) int64 to match visual_embeds, got shape "
            f"{tuple(labels.shape)} dtype {labels.dtype}."
        )
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels span [{int(labels.min())}, {int(labels.max())}] but the text bank has "
            f"{num_classes} classes; build the bank from the same data set."
        )


def _chunks(order: Tensor, size: int, drop_last: bool) -> list[Tensor]:
    parts = list(order.split(size))
    if drop_last and parts and parts[-1].numel() < size:
        parts.pop()
    return parts


def _visual(visual_embeds: Tensor, idx: Tensor) -> dict[str, Tensor]:
    v = visual_embeds[idx]
    return {
        "visual_embeds": v,
        "visual_attention_mask": torch.ones(v.shape[:2], dtype=torch.int64),
    }


def itm_batches(
    visual_embeds: Tensor,
    labels: Tensor,
    captions: CaptionBank,
    *,
    batch_size: int,
    generator: int | torch.Generator,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[dict[str, Tensor]]:
    """One epoch of balanced image–text matching batches.

    Args:
        visual_embeds: ``(N, T, D)`` float visual tokens of the split's images.
        labels: ``(N,)`` int64 image classes.
        captions: the split's :class:`~moil.harness.data.text.CaptionBank`.
        batch_size: rows per batch, even (``batch_size / 2`` images).
        generator: seed or generator for image order, templates and negative classes.
        shuffle: permute the images (else split order).
        drop_last: drop a final batch with fewer than ``batch_size`` rows.

    Yields:
        The common keys (see module doc) plus ``itm_labels (B,)`` int64 (1 match, 0 not)
        and ``caption_labels (B,)`` int64, the class the caption names.
    """
    check_positive_int("batch_size", batch_size)
    if batch_size % 2:
        raise ValueError(
            f"ITM batch_size must be even (a positive and a negative per image), got {batch_size}."
        )
    _check_inputs(visual_embeds, labels, captions.num_classes)
    gen = as_generator(generator)
    n, c, k = labels.shape[0], captions.num_classes, captions.num_templates
    if c < 2:
        raise ValueError(f"ITM needs ≥ 2 classes for negatives, the caption bank has {c}.")
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    pos_slot = torch.randint(0, k, (n,), generator=gen)
    neg_slot = torch.randint(0, k, (n,), generator=gen)
    neg_label = (labels + torch.randint(1, c, (n,), generator=gen)) % c  # uniform over wrong
    chunks = _chunks(order, batch_size // 2, drop_last)

    def epoch() -> Iterator[dict[str, Tensor]]:
        for img in chunks:
            idx = img.repeat_interleave(2)  # (B,) images: i, i, j, j, ...
            is_pos = torch.arange(idx.numel()) % 2 == 0
            cap_label = torch.where(is_pos, labels[idx], neg_label[idx])
            slot = torch.where(is_pos, pos_slot[idx], neg_slot[idx])
            yield (
                captions.tokens.gather(captions.rows(cap_label, slot))
                | _visual(visual_embeds, idx)
                | {
                    "itm_labels": is_pos.long(),
                    "caption_labels": cap_label,
                    "labels": labels[idx],
                    "image_index": idx,
                }
            )

    return epoch()


def vqa_batches(
    visual_embeds: Tensor,
    labels: Tensor,
    questions: QuestionBank,
    *,
    batch_size: int,
    generator: int | torch.Generator,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[dict[str, Tensor]]:
    """One epoch of VQA batches, one question per image.

    Args:
        visual_embeds: ``(N, T, D)`` float visual tokens of the split's images.
        labels: ``(N,)`` int64 image classes.
        questions: the split's :class:`~moil.harness.data.text.QuestionBank`.
        batch_size: images (= rows) per batch.
        generator: seed or generator for image order, families and phrasings.
        shuffle: permute the images (else split order).
        drop_last: drop a final batch with fewer than ``batch_size`` rows.

    Yields:
        The common keys (see module doc) plus ``vqa_targets (B, A)`` float32 soft scores,
        ``answer_labels (B,)`` int64 index of the correct answer and ``question_family
        (B,)`` int64.
    """
    check_positive_int("batch_size", batch_size)
    _check_inputs(visual_embeds, labels, int(questions.answers.shape[1]))
    gen = as_generator(generator)
    n, f = labels.shape[0], questions.num_families
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    family = (torch.arange(n) % f)[torch.randperm(n, generator=gen)]
    counts = questions.family_counts[family]
    phrasing = (torch.rand(n, generator=gen) * counts).long().clamp_max(counts - 1)
    row = questions.family_rows[family, phrasing]
    answer = questions.answers[family, labels]
    num_answers = len(questions.answer_vocab)
    chunks = _chunks(order, batch_size, drop_last)

    def epoch() -> Iterator[dict[str, Tensor]]:
        for idx in chunks:
            targets = torch.zeros(idx.numel(), num_answers)
            targets[torch.arange(idx.numel()), answer[idx]] = 1.0
            yield (
                questions.tokens.gather(row[idx])
                | _visual(visual_embeds, idx)
                | {
                    "vqa_targets": targets,
                    "answer_labels": answer[idx],
                    "question_family": family[idx],
                    "labels": labels[idx],
                    "image_index": idx,
                }
            )

    return epoch()
