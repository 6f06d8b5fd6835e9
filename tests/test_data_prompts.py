"""moil.harness.data.prompts: held-out phrasings, answers per class, validation."""

from __future__ import annotations

import pytest

from moil.harness.data.images import DIGIT_NAMES, FASHION_NAMES
from moil.harness.data.prompts import (
    PromptSet,
    QuestionFamily,
    TaskText,
    digit_task_text,
    fashion_task_text,
    task_text_for,
)


@pytest.mark.parametrize("task", [digit_task_text(DIGIT_NAMES), fashion_task_text(FASHION_NAMES)])
def test_held_out_phrasing_only_in_test(task):
    sets = [task.captions] + [fam.prompts for fam in task.questions]
    for ps in sets:
        held = ps.phrasings[ps.held_out]
        assert ps.for_split("test") == (held,)
        for split in ("train", "val"):
            used = ps.for_split(split)
            assert held not in used
            assert set(used) | {held} == set(ps.phrasings)
    train_captions = {task.caption(c, t) for c in range(10) for t in task.captions.indices("train")}
    test_captions = {task.caption(c, t) for c in range(10) for t in task.captions.indices("test")}
    assert not train_captions & test_captions
    assert len(train_captions) == 10 * (len(task.captions.phrasings) - 1)


def test_digit_answers():
    task = digit_task_text(DIGIT_NAMES)
    fams = {f.name: f for f in task.questions}
    assert fams["class"].answers == DIGIT_NAMES
    assert fams["parity"].answers[7] == "odd" and fams["parity"].answers[0] == "even"
    assert [fams["greater_than_five"].answers[c] for c in (5, 6)] == ["no", "yes"]
    assert task.answer_vocab == DIGIT_NAMES + ("even", "odd", "no", "yes")
    assert task.caption(3, 0) == "a photo of the digit three."


def test_fashion_answers():
    task = fashion_task_text(FASHION_NAMES)
    fams = {f.name: f for f in task.questions}
    footwear = [FASHION_NAMES[c] for c in range(10) if fams["footwear"].answers[c] == "yes"]
    assert footwear == ["sandal", "sneaker", "ankle boot"]
    assert fams["kind"].answers[8] == "bag" and fams["kind"].answers[0] == "clothing"
    # "bag" answers both "what item?" and "clothing, shoes or bag?": one vocabulary entry
    assert len(task.answer_vocab) == len(set(task.answer_vocab)) == 10 + 2 + 2
    assert task.answer_vocab[-2:] == ("clothing", "shoes")


def test_prompt_set_validation():
    with pytest.raises(ValueError, match="≥ 2 distinct"):
        PromptSet(("only one",))
    with pytest.raises(ValueError, match="≥ 2 distinct"):
        PromptSet(("same", "same"))
    with pytest.raises(ValueError, match="held_out=5"):
        PromptSet(("a", "b"), held_out=5)
    with pytest.raises(ValueError, match="split='dev'"):
        PromptSet(("a", "b")).indices("dev")
    assert PromptSet(("a", "b", "c"), held_out=0).for_split("train") == ("b", "c")


def test_task_text_validation():
    caps = PromptSet(("a {}", "b {}"))
    q = QuestionFamily("q", PromptSet(("q1?", "q2?")), ("x", "y"))
    with pytest.raises(ValueError, match="exactly one"):
        TaskText(("p", "q"), PromptSet(("no slot", "b {}")), (q,))
    with pytest.raises(ValueError, match="2 answers for 3 classes"):
        TaskText(("p", "q", "r"), caps, (q,))
    with pytest.raises(ValueError, match="10 class names"):
        digit_task_text(("a", "b"))
    with pytest.raises(ValueError, match="dataset='cifar'"):
        task_text_for("cifar", DIGIT_NAMES)
    assert task_text_for("digits", DIGIT_NAMES) == digit_task_text(DIGIT_NAMES)
