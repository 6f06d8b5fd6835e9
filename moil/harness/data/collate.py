"""Processor-based batches from rows on disk: ITM pairs with negatives, retrieval pairs, VQA soft targets.

Every function is pure: the rows, the texts and the random draws come in, a
``dict[str, Tensor]`` goes out (the processor's keys — ``input_ids``,
``attention_mask``, ``pixel_values``, … — plus the task's labels). Randomness is
an explicit ``torch.Generator``, so an epoch's order and negatives are a function
of ``(seed, epoch)`` (:func:`epoch_plan`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from moil.harness.config import ConfigError

__all__ = [
    "answer_vocab", "draw_negatives", "epoch_generator", "epoch_plan", "itm_batch", "pair_batch", "retrieval_batch",
    "is_answer", "pair_label", "soft_scores", "vqa_batch",
]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of epoch ``epoch`` of a run seeded ``seed``: ``manual_seed(seed · 10007 + epoch)``."""
    return torch.Generator().manual_seed(seed * 10_007 + epoch)


def draw_negatives(texts: Sequence[str], generator: torch.Generator) -> Tensor:
    """For each row ``i`` a row ``j`` whose text differs: ``(N,)`` int64.

    ``j = (i + u_i) mod N`` with ``u_i`` uniform on ``[1, N)``, then moved forward to the
    next row whose text is not ``texts[i]`` (captions repeat: two photos of a "three").

    Raises:
      ConfigError: fewer than two distinct texts (no negative exists).
    """
    n = len(texts)
    if len(set(texts)) < 2:
        raise ConfigError(f"image-text matching needs at least two different texts for negatives; got {set(texts)}.")
    j = ((torch.arange(n) + torch.randint(1, max(n, 2), (n,), generator=generator)) % n).tolist()
    for i in range(n):
        while texts[j[i]] == texts[i]:
            j[i] = (j[i] + 1) % n
    return torch.tensor(j, dtype=torch.int64)


def epoch_plan(n: int, seed: int, epoch: int, texts: Sequence[str] | None = None) -> tuple[Tensor, Tensor | None]:
    """Epoch ``epoch``'s row order ``(N,)`` and, given ``texts``, each row's negative ``(N,)``.

    A pure function of its arguments: a resumed run replays the same epochs exactly.
    """
    g = epoch_generator(seed, epoch)
    order = torch.randperm(n, generator=g)
    return order, (draw_negatives(texts, g) if texts is not None else None)


def _encode(processor: Any, images: list, texts: list[str]) -> dict[str, Tensor]:
    enc = processor(images=images, text=texts, padding=True, truncation=True, return_tensors="pt")
    return {k: v for k, v in enc.items() if isinstance(v, Tensor)}


def itm_batch(processor: Any, images: list, texts: Sequence[str], negative_texts: Sequence[str]) -> dict[str, Tensor]:
    """ITM batch of ``2R`` pairs: image ``r`` with its text (label 1), then with a negative
    text (label 0), interleaved ``r, r, s, s, …``.

    Args:
      images: ``R`` decoded images.
      texts: their ``R`` texts; negative_texts: ``R`` texts that do not describe them.

    Returns:
      The processor's keys ``(2R, …)`` plus ``itm_labels`` ``(2R,)`` int64.
    """
    pair_images = [im for im in images for _ in (0, 1)]
    pair_texts = [t for pos, neg in zip(texts, negative_texts, strict=True) for t in (pos, neg)]
    labels = torch.tensor([1, 0] * len(images), dtype=torch.int64)
    return _encode(processor, pair_images, pair_texts) | {"itm_labels": labels}


def retrieval_batch(processor: Any, images: list, texts: Sequence[str]) -> dict[str, Tensor]:
    """Contrastive batch: row ``b`` of the images and of the texts is one matching pair."""
    return _encode(processor, images, list(texts))


def is_answer(value: Any) -> bool:
    """One VQA answer: a non-empty string, or an int (a CSV column reads "3" as 3) — not a bool."""
    return (isinstance(value, str) and bool(value.strip())) or (isinstance(value, int) and not isinstance(value, bool))


def soft_scores(answers: Any) -> dict[str, float]:
    """An answers cell → ``{answer: score}``: a string scores 1; a list (VQAv2's ten human
    answers) scores ``min(1, count / 3)`` per distinct answer. A bool is no answer (refused)."""
    one = isinstance(answers, (str, int))  # an int: a CSV column of numbers ("3" read as 3)
    if any(isinstance(a, bool) for a in ([answers] if one else answers)):
        raise ConfigError(f"VQA: answers cell {answers!r} holds a bool, not an answer string; fix the "
                          "[data.columns] answers column (write answers as text, e.g. 'yes' / 'no').")
    if one:
        return {str(answers): 1.0}
    counts = Counter(str(a) for a in answers)
    return {a: min(1.0, c / 3) for a, c in counts.items()}


def answer_vocab(cells: Sequence[Any]) -> tuple[str, ...]:
    """Every answer of the training split, most frequent first (ties by name)."""
    counts = Counter(a for cell in cells for a in soft_scores(cell))
    return tuple(sorted(counts, key=lambda a: (-counts[a], a)))


def vqa_batch(processor: Any, images: list, questions: Sequence[str], answers: Sequence[Any], vocab: Sequence[str]) -> dict[str, Tensor]:
    """VQA batch: the processor's keys plus ``vqa_targets`` ``(B, A)`` soft scores over ``vocab``
    (answers outside the training vocabulary score 0, as in VQAv2)."""
    index = {a: i for i, a in enumerate(vocab)}
    targets = torch.zeros(len(questions), len(vocab))
    for b, cell in enumerate(answers):
        for a, s in soft_scores(cell).items():
            if a in index:
                targets[b, index[a]] = s
    return _encode(processor, images, list(questions)) | {"vqa_targets": targets}


def pair_batch(processor: Any, left: list, right: list, texts: Sequence[str], labels: Sequence[Any]) -> dict[str, Tensor]:
    """NLVR2 batch: a sentence about two images, ``pair_labels`` ``(B,)`` int64 (``True``/``1`` = holds).

    Each side is encoded with the processor; pixels are stacked as ``pixel_values``
    ``(B, 2, 3, H, W)`` (ViLT's ``num_images = 2``), visual features (VisualBERT) are
    concatenated along the tokens: ``visual_embeds`` ``(B, T_left + T_right, D)``.
    """
    a, b = _encode(processor, left, list(texts)), _encode(processor, right, list(texts))
    for key in ("pixel_values", "pixel_mask"):
        if key in a:
            if a[key].shape != b[key].shape:
                raise ConfigError(f"NLVR2: the left and right images encode to {tuple(a[key].shape)} and "
                                  f"{tuple(b[key].shape)}; resize the pairs to one size.")
            a[key] = torch.stack([a[key], b[key]], dim=1)
    for key in ("visual_embeds", "visual_attention_mask", "visual_token_type_ids"):
        if key in a:
            a[key] = torch.cat([a[key], b[key]], dim=1)
    return a | {"pair_labels": torch.tensor([_label(y) for y in labels], dtype=torch.int64)}


def pair_label(y: Any) -> int | None:
    """A pair label: ``True``/``1``/``"true"`` → 1, ``False``/``0``/``"false"`` → 0, anything else ``None``."""
    return {"true": 1, "1": 1, "false": 0, "0": 0}.get(str(y).strip().lower())


def _label(y: Any) -> int:
    if (label := pair_label(y)) is None:
        raise ConfigError(f"NLVR2: label {y!r} is not true/false or 1/0; fix the [data.columns] label column.")
    return label
