"""The words of the digit-pair tasks: NLVR2-style statements and VQA questions about two digits.

Every family is a **symmetric** function of the two digits ``(a, b)`` (its value does not
change when the images swap places): VisualBERT gives every visual token the same position
and MiniLM's type vocabulary has only text / visual, so nothing pretrained tells the model
which of the concatenated tokens came from the "left" image; a symmetric statement is a
function of the unordered pair, which the bag of both images' tokens carries.

A :class:`PairFamily` is one relation ``value(a, b) -> index`` into its ``values`` (words),
with phrasings as a :class:`~moil.harness.data.prompts.PromptSet` (one held out for test).
Statement phrasings hold one ``{}`` for the value word, so a statement and its hard negative
differ in exactly that word ("the sum of the two digits is seven" / "... is nine").
Question phrasings hold none; the answer is ``values[value(a, b)]``. A held-out (test)
question keeps a word that names its family in the training phrasings ("sum", "larger",
"smaller", "odd") and rewords the rest (at least three words differ from every training
phrasing): test then measures new wording around a known relation, not synonym transfer ("how much are the two numbers together?" scored 0.03 after
full fine-tuning).

``same_class_half``: the family draws a partner of the same class for exactly half of its
pairs (else "the two digits are equal" would be false for 90 % of random pairs).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from torch import Tensor

from moil.harness.data.prompts import PromptSet

__all__ = ["NUMBER_WORDS", "PairFamily", "STATEMENTS", "QUESTIONS", "answer_vocab"]

#: ``NUMBER_WORDS[n]`` names ``n`` for ``0 ≤ n ≤ 18`` (the largest sum of two digits).
NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
)  # fmt: skip


def _sum(a: Tensor, b: Tensor) -> Tensor:
    return a + b


def _larger(a: Tensor, b: Tensor) -> Tensor:
    return a.maximum(b)


def _smaller(a: Tensor, b: Tensor) -> Tensor:
    return a.minimum(b)


def _odd_count(a: Tensor, b: Tensor) -> Tensor:
    return a % 2 + b % 2


def _equal(a: Tensor, b: Tensor) -> Tensor:
    return (a == b).long()


@attrs.frozen
class PairFamily:
    """One relation over a pair of digits, phrased several ways.

    Attributes:
        name: short id, e.g. ``"sum"``.
        prompts: phrasings (statements: one ``{}`` each, for the value word), one held out.
        values: the words of the ``K`` values, ``values[k]`` names value ``k``.
        value: ``(a (B,), b (B,)) int64 -> (B,) int64`` in ``[0, K)``, symmetric in ``a, b``.
        same_class_half: half of this family's pairs show two digits of the same class.
    """

    name: str
    prompts: PromptSet
    values: tuple[str, ...]
    value: Callable[[Tensor, Tensor], Tensor]
    same_class_half: bool = False

    @property
    def num_values(self) -> int:
        return len(self.values)


#: NLVR2-style statements (true / false of the pair), 4 families.
STATEMENTS = (
    PairFamily("sum", PromptSet((
        "the sum of the two digits is {}", "the two digits add up to {}",
        "together the two digits make {}", "added together the two numbers give {}",
    )), NUMBER_WORDS, _sum),
    PairFamily("larger", PromptSet((
        "the larger digit is a {}", "the bigger of the two digits is {}",
        "the largest of the two numbers is {}", "the higher of the two digits is a {}",
    )), NUMBER_WORDS[:10], _larger),
    PairFamily("odd-count", PromptSet((
        "the number of odd digits is {}", "{} of the two digits are odd",
        "there are {} odd digits", "the pair holds {} odd numbers",
    )), NUMBER_WORDS[:3], _odd_count),
    PairFamily("equal", PromptSet((
        "the two digits are {}", "the digits shown are {}",
        "these two numbers are {}", "the pair of digits is {}",
    )), ("different", "equal"), _equal, same_class_half=True),
)  # fmt: skip

#: VQA questions over the pair, 4 families, answers from :data:`NUMBER_WORDS`.
QUESTIONS = (
    PairFamily("sum", PromptSet((
        "what is the sum of the two digits?", "what do the two digits add up to?",
        "what is the total of the two digits?", "these numbers have what sum?",
    )), NUMBER_WORDS, _sum),
    PairFamily("larger", PromptSet((
        "what is the larger digit?", "which is the bigger of the two digits?",
        "what is the largest of the two numbers?", "of these numbers, which one is larger?",
    )), NUMBER_WORDS[:10], _larger),
    PairFamily("smaller", PromptSet((
        "what is the smaller digit?", "which is the lesser of the two digits?",
        "what is the smallest of the two numbers?", "of these numbers, which one is smaller?",
    )), NUMBER_WORDS[:10], _smaller),
    PairFamily("odd-count", PromptSet((
        "how many of the two digits are odd?", "how many odd digits are there?",
        "how many of the digits are odd numbers?", "what is the number of odd digits?",
    )), NUMBER_WORDS[:3], _odd_count),
)  # fmt: skip


def answer_vocab(families: tuple[PairFamily, ...]) -> tuple[str, ...]:
    """All distinct value words of ``families``, in order of first appearance."""
    return tuple(dict.fromkeys(v for fam in families for v in fam.values))
