"""The words of the demo tasks: caption templates and VQA question families.

Both come as :class:`PromptSet` s — a tuple of phrasings with **one held out**: the test
split uses only the held-out phrasing, train and val only the others, so test accuracy
measures generalisation to an unseen wording, and validation never peeks at it.

A :class:`QuestionFamily` is one question (several phrasings) with its answer for every
class, e.g. *"is this digit even or odd?"* → ``("even", "odd", "even", ...)``. A
:class:`TaskText` bundles class names, caption templates and question families, and
defines the answer vocabulary (answers in order of first appearance).
"""

from __future__ import annotations

import attrs

__all__ = [
    "PromptSet",
    "QuestionFamily",
    "TaskText",
    "digit_task_text",
    "fashion_task_text",
    "task_text_for",
]

SPLITS = ("train", "val", "test")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got split={split!r}.")


@attrs.frozen
class PromptSet:
    """Phrasings of one prompt with ``phrasings[held_out]`` reserved for the test split.

    Attributes:
        phrasings: at least two distinct strings (captions contain one ``{}`` for the class).
        held_out: index of the test-only phrasing (negative indices allowed).
    """

    phrasings: tuple[str, ...]
    held_out: int = -1

    def __attrs_post_init__(self) -> None:
        if len(self.phrasings) < 2 or len(set(self.phrasings)) != len(self.phrasings):
            raise ValueError(
                "a PromptSet needs ≥ 2 distinct phrasings (one is held out), "
                f"got phrasings={self.phrasings!r}."
            )
        if not -len(self.phrasings) <= self.held_out < len(self.phrasings):
            raise ValueError(
                f"held_out={self.held_out} is out of range for {len(self.phrasings)} phrasings."
            )

    def indices(self, split: str) -> tuple[int, ...]:
        """Phrasing indices used by ``split``: ``(held_out,)`` for test, the rest otherwise."""
        _check_split(split)
        held = self.held_out % len(self.phrasings)
        if split == "test":
            return (held,)
        return tuple(i for i in range(len(self.phrasings)) if i != held)

    def for_split(self, split: str) -> tuple[str, ...]:
        """The phrasings ``split`` may use (see :meth:`indices`)."""
        return tuple(self.phrasings[i] for i in self.indices(split))


@attrs.frozen
class QuestionFamily:
    """One question, phrased several ways, with the answer for each class index.

    Attributes:
        name: short id, e.g. ``"parity"``.
        prompts: question phrasings (no ``{}``), one held out for test.
        answers: ``answers[c]`` is the answer string for class ``c``.
    """

    name: str
    prompts: PromptSet
    answers: tuple[str, ...]


@attrs.frozen
class TaskText:
    """All text of a data set's tasks.

    Attributes:
        class_names: ``C`` names, filled into caption templates.
        captions: caption templates, each with exactly one ``{}``.
        questions: the VQA question families, each with ``C`` answers.
    """

    class_names: tuple[str, ...]
    captions: PromptSet
    questions: tuple[QuestionFamily, ...]

    def __attrs_post_init__(self) -> None:
        for t in self.captions.phrasings:
            if t.count("{}") != 1:
                raise ValueError(f"caption template {t!r} must contain exactly one '{{}}'.")
        for fam in self.questions:
            if len(fam.answers) != len(self.class_names):
                raise ValueError(
                    f"question family {fam.name!r} has {len(fam.answers)} answers for "
                    f"{len(self.class_names)} classes; give one answer per class."
                )

    @property
    def answer_vocab(self) -> tuple[str, ...]:
        """All distinct answers, in order of first appearance over families then classes."""
        return tuple(dict.fromkeys(a for fam in self.questions for a in fam.answers))

    def caption(self, label: int, template: int) -> str:
        """The caption of class ``label`` with template index ``template``."""
        return self.captions.phrasings[template].format(self.class_names[label])


def digit_task_text(class_names: tuple[str, ...]) -> TaskText:
    """Captions and questions for the ten digits (``class_names[c]`` names digit ``c``).

    Questions: the digit's name (10 answers), even/odd, and "greater than five" yes/no.
    """
    if len(class_names) != 10:
        raise ValueError(f"digit_task_text needs 10 class names, got {len(class_names)}.")
    captions = PromptSet((
        "a photo of the digit {}.",
        "a handwritten {}.",
        "the number {} written by hand.",
        "an image showing a handwritten {}.",
        "a scanned digit: {}.",
    ))  # fmt: skip
    which = QuestionFamily(
        "class",
        PromptSet(("what digit is this?", "which number is written here?",
                   "what number does the image show?", "which digit can you see?")),
        tuple(class_names),
    )  # fmt: skip
    parity = QuestionFamily(
        "parity",
        PromptSet(("is this digit even or odd?", "is the number even or odd?",
                   "is the written number odd or even?")),
        tuple("even" if c % 2 == 0 else "odd" for c in range(10)),
    )  # fmt: skip
    greater = QuestionFamily(
        "greater_than_five",
        PromptSet(("is the digit greater than five?", "is the number bigger than five?",
                   "is this number larger than five?")),
        tuple("yes" if c > 5 else "no" for c in range(10)),
    )  # fmt: skip
    return TaskText(tuple(class_names), captions, (which, parity, greater))


def fashion_task_text(class_names: tuple[str, ...]) -> TaskText:
    """Captions and questions for Fashion-MNIST's ten classes (in the official order).

    Questions: the item's name (10 answers), "is this footwear?" (sandal, sneaker, ankle boot
    → yes), and clothing / shoes / bag.
    """
    if len(class_names) != 10:
        raise ValueError(f"fashion_task_text needs 10 class names, got {len(class_names)}.")
    shoes = {5, 7, 9}
    captions = PromptSet((
        "a photo of the {}.",
        "a product picture of the {}.",
        "a gray-scale image of the {}.",
        "a small picture showing the {}.",
        "a catalogue photo of the {}.",
    ))  # fmt: skip
    which = QuestionFamily(
        "class",
        PromptSet(("what item is this?", "what is shown in the picture?",
                   "which product is this?", "what kind of item can you see?")),
        tuple(class_names),
    )  # fmt: skip
    footwear = QuestionFamily(
        "footwear",
        PromptSet(("is this footwear?", "is this something you wear on your feet?",
                   "is this item a kind of shoe?")),
        tuple("yes" if c in shoes else "no" for c in range(10)),
    )  # fmt: skip
    kind = QuestionFamily(
        "kind",
        PromptSet(("is this clothing, shoes or a bag?", "is the item clothing, shoes or a bag?",
                   "which group is this: clothing, shoes or bag?")),
        tuple("shoes" if c in shoes else "bag" if c == 8 else "clothing" for c in range(10)),
    )  # fmt: skip
    return TaskText(tuple(class_names), captions, (which, footwear, kind))


def task_text_for(dataset: str, class_names: tuple[str, ...]) -> TaskText:
    """:class:`TaskText` for an :class:`~moil.harness.data.images.ImageSplits` name."""
    makers = {"digits": digit_task_text, "fashion": fashion_task_text}
    if dataset not in makers:
        raise ValueError(f"no task text for dataset={dataset!r}; known: {sorted(makers)}.")
    return makers[dataset](class_names)
