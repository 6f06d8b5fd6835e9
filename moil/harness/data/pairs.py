"""The digit-pairs benchmark: NLVR2-style statements and VQA over **pairs** of real MNIST digits.

``prepare_pair_data(seed)`` reuses the demo's digits, split and cached EfficientNet-Lite0 grid
(:func:`moil.harness.data.demo.prepare_demo_data`) and pairs images **within each split** (no
image is shared across splits). Each image's 4 × 4 grid is average-pooled to 2 × 2, so a pair
is ``T = 2 · 4 = 8`` visual tokens ``(B, 8, 320)`` (the two images' tokens concatenated) and
a pair's sequence is no longer than one demo image's.

* **nlvr2** — rows ``2i`` / ``2i + 1`` are pair ``i`` with a true statement and its *hard
  negative*: the same phrasing with one value word changed ("the sum of the two digits is
  seven" / "... is nine"). The false word is the value of another random pair of the split
  (resampled until it differs), so a value word's frequency is nearly the same among true and
  false statements: the text alone does not tell the label. ``pair_labels`` ``(B,)`` int64, 1 =
  holds; every batch is exactly balanced.
* **vqa** — one question per pair; ``vqa_targets`` ``(B, A)`` one-hot over the 19 number words.

An epoch has ``N`` pairs (``N`` = images in the split): ``first`` a permutation of the split,
``second`` uniform over the other images (a same-class image for every other pair of a
``same_class_half`` family), families in equal numbers (``arange(N) % F`` shuffled), phrasings
uniform over the split's (test: only the held-out one). All draws happen when the epoch is
made, from one generator: same seed → same batches. Evaluation uses
:attr:`PairData.eval_pairs` epochs' pairs drawn with :data:`EVAL_SEED`.

Keys: ``input_ids``, ``attention_mask``, ``token_type_ids`` ``(B, L)``, ``visual_embeds``
``(B, 8, D)``, ``visual_attention_mask`` ``(B, 8)``, ``digits`` ``(B, 2)`` int64,
``image_index`` ``(B, 2)`` int64, ``pair_family`` / ``question_family`` ``(B,)`` int64.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from moil.harness.data._checks import check_positive_int
from moil.harness.data.pair_prompts import NUMBER_WORDS, QUESTIONS, STATEMENTS, PairFamily
from moil.harness.data.tasks import as_generator
from moil.harness.data.text import TokenizedTexts, load_tokenizer, tokenize

__all__ = ["EVAL_PAIRS_PER_IMAGE", "EVAL_SEED", "PairData", "PairSplit", "pool_grid", "prepare_pair_data"]

EVAL_SEED = 2024
EVAL_PAIRS_PER_IMAGE = 2  # default: val 1 000 pairs (2 000 NLVR2 rows), test 2 000 (4 000 rows)
POOLED_SIDE = 2
_TRIES = 8  # draws of another pair's value for a hard negative before falling back


def pool_grid(visual_embeds: Tensor, side: int = POOLED_SIDE) -> Tensor:
    """``(N, g², D)`` row-major grid tokens → ``(N, side², D)``, adaptive average pooling."""
    n, t, d = visual_embeds.shape
    g = int(round(t**0.5))
    if g * g != t:
        raise ValueError(f"pool_grid: {t} tokens are not a square grid; pass (N, g*g, D) features.")
    grid = visual_embeds.reshape(n, g, g, d).permute(0, 3, 1, 2)
    return F.adaptive_avg_pool2d(grid, side).permute(0, 2, 3, 1).reshape(n, side * side, d).contiguous()


@attrs.frozen
class TextTable:
    """Every sentence of ``families`` one split may use, tokenised once.

    ``rows[f, p, k]`` is the row in ``tokens`` of family ``f``, phrasing slot ``p``, value ``k``
    (``-1``: no such slot); ``counts[f]`` = phrasings of family ``f`` in this split. Questions
    have no value word: every ``k`` of a phrasing points at the same row.
    """

    tokens: TokenizedTexts
    rows: Tensor  # (F, P, K) int64
    counts: Tensor  # (F,) int64


def build_text_table(tokenizer, families: tuple[PairFamily, ...], split: str) -> TextTable:
    texts: list[str] = []
    width = max(len(f.prompts.for_split(split)) for f in families)
    k_max = max(f.num_values for f in families)
    rows = torch.full((len(families), width, k_max), -1, dtype=torch.int64)
    for i, fam in enumerate(families):
        for p, phrasing in enumerate(fam.prompts.for_split(split)):
            if "{}" not in phrasing:  # a question: one sentence for every value
                rows[i, p, : fam.num_values] = len(texts)
                texts.append(phrasing)
                continue
            for k, word in enumerate(fam.values):
                rows[i, p, k] = len(texts)
                texts.append(phrasing.format(word))
    counts = torch.tensor([len(f.prompts.for_split(split)) for f in families], dtype=torch.int64)
    return TextTable(tokenize(tokenizer, texts), rows, counts)


def _values(families: tuple[PairFamily, ...], a: Tensor, b: Tensor, family: Tensor) -> Tensor:
    """``(n,)`` value of each row's family for digits ``a, b`` (any leading shape ``(..., n)``)."""
    table = torch.stack([fam.value(a, b) for fam in families])  # (F, ..., n)
    return table.gather(0, family.expand_as(a).unsqueeze(0)).squeeze(0)


@attrs.frozen
class PairSplit:
    """One split's images, pooled visual tokens and sentence tables.

    Attributes:
        labels: ``(N,)`` int64 digit of each image.
        visual_embeds: ``(N, 4, D)`` float32 pooled tokens, row-aligned with ``labels``.
        statements, questions: this split's :class:`TextTable` s (test: held-out phrasings).
    """

    labels: Tensor
    visual_embeds: Tensor
    statements: TextTable
    questions: TextTable

    def draw(self, families: tuple[PairFamily, ...], gen: torch.Generator, repeats: int = 1):
        """``(first, second, family)`` ``(repeats · N,)`` int64 each: one epoch's pairs."""
        n, f = self.labels.shape[0], len(families)
        if n < 2:
            raise ValueError(f"a pair split needs >= 2 images, this one has {n}; raise data.limit.")
        first = torch.cat([torch.randperm(n, generator=gen) for _ in range(repeats)])
        m = first.numel()
        family = (torch.arange(m) % f)[torch.randperm(m, generator=gen)]
        second = (first + torch.randint(1, n, (m,), generator=gen)) % n
        by_class = torch.argsort(self.labels, stable=True)
        count = torch.bincount(self.labels, minlength=10)
        start = torch.cumsum(count, 0) - count
        c = self.labels[first]
        pos = (torch.rand(m, generator=gen) * count[c]).long().clamp_max(count[c] - 1)
        partner = by_class[start[c] + pos]
        partner = torch.where(partner == first, by_class[start[c] + (pos + 1) % count[c]], partner)
        halves = torch.tensor([fam.same_class_half for fam in families])[family]
        rank = torch.zeros(m, dtype=torch.int64)
        for i in range(f):  # k-th pair of a family: even k → same class (exactly half)
            rows = (family == i).nonzero().squeeze(1)
            rank[rows] = torch.arange(rows.numel())
        second = torch.where(halves & (rank % 2 == 0), partner, second)
        return first, second, family

    def _phrasing(self, table: TextTable, family: Tensor, gen: torch.Generator) -> Tensor:
        counts = table.counts[family]
        return (torch.rand(family.numel(), generator=gen) * counts).long().clamp_max(counts - 1)

    def _visual(self, first: Tensor, second: Tensor) -> dict[str, Tensor]:
        v = torch.cat([self.visual_embeds[first], self.visual_embeds[second]], dim=1)
        return {"visual_embeds": v, "visual_attention_mask": torch.ones(v.shape[:2], dtype=torch.int64),
                "digits": torch.stack([self.labels[first], self.labels[second]], 1),
                "image_index": torch.stack([first, second], 1)}

    def nlvr2_batches(self, *, batch_size: int, generator: int | torch.Generator, repeats: int = 1,
                      drop_last: bool = False) -> Iterator[dict[str, Tensor]]:
        """One epoch of balanced statement batches: ``batch_size / 2`` pairs, a true and a false row each."""
        check_positive_int("batch_size", batch_size)
        if batch_size % 2:
            raise ValueError(f"data.batch_size = {batch_size} must be even for nlvr2 on digit-pairs (a true "
                             f"and a false statement per pair); use data.batch_size = {batch_size + 1}.")
        gen = as_generator(generator)
        first, second, family = self.draw(STATEMENTS, gen, repeats)
        a, b = self.labels[first], self.labels[second]
        true = _values(STATEMENTS, a, b, family)
        other = self.labels[torch.randint(0, len(self.labels), (2, _TRIES, a.numel()), generator=gen)]
        cand = _values(STATEMENTS, other[0], other[1], family)  # (TRIES, n)
        k = torch.tensor([fam.num_values for fam in STATEMENTS])[family]
        fallback = (true + torch.randint(1, 1 << 20, true.shape, generator=gen) % (k - 1) + 1) % k
        differs = cand != true
        first_ok = differs.long().argmax(0)
        false = torch.where(differs.any(0), cand.gather(0, first_ok[None]).squeeze(0), fallback)
        slot = self._phrasing(self.statements, family, gen)
        rows_true = self.statements.rows[family, slot, true]
        rows_false = self.statements.rows[family, slot, false]
        return self._epoch(first.numel(), batch_size // 2, drop_last, lambda p: (
            self.statements.tokens.gather(torch.stack([rows_true[p], rows_false[p]], 1).flatten())
            | self._visual(first[p].repeat_interleave(2), second[p].repeat_interleave(2))
            | {"pair_labels": (torch.arange(2 * p.numel()) % 2 == 0).long(),
               "pair_family": family[p].repeat_interleave(2)}
        ))

    def vqa_batches(self, *, batch_size: int, generator: int | torch.Generator, repeats: int = 1,
                    drop_last: bool = False) -> Iterator[dict[str, Tensor]]:
        """One epoch of question batches over pairs; answers index :data:`NUMBER_WORDS`."""
        check_positive_int("batch_size", batch_size)
        gen = as_generator(generator)
        first, second, family = self.draw(QUESTIONS, gen, repeats)
        answer = _values(QUESTIONS, self.labels[first], self.labels[second], family)  # = the number
        slot = self._phrasing(self.questions, family, gen)
        rows = self.questions.rows[family, slot, 0]

        def make(p: Tensor) -> dict[str, Tensor]:
            targets = F.one_hot(answer[p], len(NUMBER_WORDS)).float()
            return (self.questions.tokens.gather(rows[p]) | self._visual(first[p], second[p])
                    | {"vqa_targets": targets, "answer_labels": answer[p], "question_family": family[p]})

        return self._epoch(first.numel(), batch_size, drop_last, make)

    @staticmethod
    def _epoch(n: int, size: int, drop_last: bool, make) -> Iterator[dict[str, Tensor]]:
        parts = list(torch.arange(n).split(size))
        if drop_last and parts and parts[-1].numel() < size:
            parts.pop()
        return (make(p) for p in parts)


@attrs.frozen
class PairTaskText:
    """The text of the pair tasks: statement / question families and the VQA answer words."""

    statements: tuple[PairFamily, ...] = STATEMENTS
    questions: tuple[PairFamily, ...] = QUESTIONS
    answer_vocab: tuple[str, ...] = NUMBER_WORDS


@attrs.frozen
class PairData:
    """The three pair splits; batches through :meth:`train_stream` / :meth:`eval_batches`
    (the interface :mod:`moil.harness.batches` reads from data other than the demo set)."""

    name: str
    task: PairTaskText
    train: PairSplit
    val: PairSplit
    test: PairSplit
    eval_pairs: int = EVAL_PAIRS_PER_IMAGE

    def _make(self, split: str, task: str):
        if task not in ("nlvr2", "vqa"):
            raise ValueError(f"train.tasks {task!r} does not run on data.dataset = 'digit-pairs'; use "
                             "'nlvr2' (statements about a pair) or 'vqa' (questions about a pair).")
        part = getattr(self, split)
        return part.nlvr2_batches if task == "nlvr2" else part.vqa_batches

    def train_stream(self, task: str, batch_size: int, seed: int, device: torch.device) -> Iterator[dict]:
        """Full training batches epoch after epoch, epoch ``e`` drawn from ``seed · 10 007 + e``."""
        make = self._make("train", task)
        pairs, need = int(self.train.labels.shape[0]), batch_size // 2 if task == "nlvr2" else batch_size
        if pairs < max(need, 1):
            raise ValueError(f"train_stream: the training split makes {pairs} pairs an epoch but one {task} "
                             f"batch of data.batch_size = {batch_size} takes {need}; raise data.limit to >= "
                             f"{need} (0 keeps every image) or lower data.batch_size.")

        def epochs() -> Iterator[dict]:
            epoch = 0
            while True:
                for batch in make(batch_size=batch_size, generator=seed * 10_007 + epoch, drop_last=True):
                    yield {k: v.to(device) for k, v in batch.items()}
                epoch += 1

        return epochs()

    def eval_batches(self, split: str, task: str, batch_size: int, device: torch.device) -> list[dict]:
        """The fixed evaluation batches of ``split`` (:attr:`eval_pairs` pairs per image)."""
        if split not in ("val", "test"):
            raise KeyError(f"unknown split {split!r}; use 'val' or 'test'.")
        make = self._make(split, task)
        size = batch_size + batch_size % 2 if task == "nlvr2" else batch_size
        batches = make(batch_size=size, generator=EVAL_SEED, repeats=self.eval_pairs)
        return [{k: v.to(device) for k, v in b.items()} for b in batches]


def prepare_pair_data(seed: int = 0, *, cache_dir: str | Path | None = None,
                      tokenizer_path: str | Path | None = None, limit: int | None = None,
                      eval_pairs: int = EVAL_PAIRS_PER_IMAGE) -> PairData:
    """The digit-pairs data: the demo digits' split (``seed``) and cached grid, pooled to 2 × 2,
    with each split's statement and question tables (the test split: held-out phrasings only)."""
    from moil.harness.data.demo import prepare_demo_data

    demo = prepare_demo_data("digits", seed, cache_dir=cache_dir, tokenizer_path=tokenizer_path, limit=limit)
    tokenizer = load_tokenizer(tokenizer_path)
    parts = {
        name: PairSplit(demo[name].images.labels, pool_grid(demo[name].visual_embeds),
                        build_text_table(tokenizer, STATEMENTS, name), build_text_table(tokenizer, QUESTIONS, name))
        for name in ("train", "val", "test")
    }
    check_positive_int("eval_pairs", eval_pairs)
    return PairData("digit-pairs", PairTaskText(), **parts, eval_pairs=eval_pairs)
