"""moil.harness.data.tasks: balanced, deterministic ITM and VQA batches (fast: a word-level tokenizer)."""

from __future__ import annotations

import zlib

import pytest
import torch

from moil.harness.data.images import DIGIT_NAMES
from moil.harness.data.prompts import digit_task_text
from moil.harness.data.tasks import as_generator, itm_batches, vqa_batches
from moil.harness.data.text import build_caption_bank, build_question_bank

N, T, D = 37, 4, 6


class WordTokenizer:
    """A tiny deterministic tokenizer with the HF call signature: one id per word."""

    def __call__(self, texts, padding=True, truncation=False, return_tensors="pt"):
        rows = [
            [101] + [1000 + zlib.crc32(w.encode()) % 29000 for w in t.split()] + [102]
            for t in texts
        ]
        width = max(map(len, rows))
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


TASK = digit_task_text(DIGIT_NAMES)
TOK = WordTokenizer()


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(N) % 10
    labels = labels[torch.randperm(N, generator=gen)]
    # visual row i encodes i, so a batch's visual rows can be traced back to images
    visual = torch.arange(N, dtype=torch.float32)[:, None, None].expand(N, T, D).clone()
    return visual, labels


def _epoch(fn, *args, **kw):
    return list(fn(*args, **kw))


def _text_rows(bank_tokens, batch):
    """Map each batch row's tokens back to the text it came from."""
    by_ids = {}
    for i, text in enumerate(bank_tokens.texts):
        n = int(bank_tokens.attention_mask[i].sum())
        by_ids[tuple(bank_tokens.input_ids[i, :n].tolist())] = text
    out = []
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
        out.append(by_ids[tuple(ids[: int(mask.sum())].tolist())])
    return out


def test_itm_balanced_and_correct(data):
    visual, labels = data
    bank = build_caption_bank(TOK, TASK, "train")
    batches = _epoch(itm_batches, visual, labels, bank, batch_size=8, generator=0)
    seen = torch.cat([b["image_index"] for b in batches])
    assert torch.bincount(seen, minlength=N).tolist() == [2] * N  # each image: +1 and -1
    for b in batches:
        B = b["itm_labels"].numel()
        assert b["itm_labels"].tolist() == [1, 0] * (B // 2)
        assert torch.equal(b["image_index"][0::2], b["image_index"][1::2])
        assert torch.equal(b["labels"], labels[b["image_index"]])
        pos, neg = b["itm_labels"] == 1, b["itm_labels"] == 0
        assert torch.equal(b["caption_labels"][pos], b["labels"][pos])
        assert (b["caption_labels"][neg] != b["labels"][neg]).all()
        # visual rows really are the indexed images
        torch.testing.assert_close(b["visual_embeds"][:, 0, 0], b["image_index"].float())
        assert b["visual_embeds"].shape == (B, T, D) and b["visual_embeds"].dtype == torch.float32
        assert b["visual_attention_mask"].shape == (B, T)
        assert (
            b["input_ids"].dtype == torch.int64
            and b["input_ids"].shape == b["attention_mask"].shape
        )
        # padding trimmed to the batch's longest caption
        assert int(b["attention_mask"].sum(1).max()) == b["input_ids"].shape[1]
        # the text is the caption of the class it claims, with a train template
        texts = _text_rows(bank.tokens, b)
        train_templates = TASK.captions.for_split("train")
        for text, cap_label in zip(texts, b["caption_labels"].tolist(), strict=True):
            assert any(text == t.format(DIGIT_NAMES[cap_label]) for t in train_templates)
    assert [b["itm_labels"].numel() for b in batches] == [8] * 9 + [2]


def test_itm_same_seed_same_batches_other_seed_differs(data):
    visual, labels = data
    bank = build_caption_bank(TOK, TASK, "train")
    a = _epoch(itm_batches, visual, labels, bank, batch_size=6, generator=5)
    b = _epoch(
        itm_batches, visual, labels, bank, batch_size=6, generator=torch.Generator().manual_seed(5)
    )
    c = _epoch(itm_batches, visual, labels, bank, batch_size=6, generator=6)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k
    assert any(
        not torch.equal(x["image_index"], y["image_index"]) for x, y in zip(a, c, strict=True)
    )


def test_itm_epoch_fixed_at_call_time(data):
    """Drawing from the generator while the epoch is consumed does not change it."""
    visual, labels = data
    bank = build_caption_bank(TOK, TASK, "train")
    ref = _epoch(itm_batches, visual, labels, bank, batch_size=6, generator=1)
    gen = torch.Generator().manual_seed(1)
    it = itm_batches(visual, labels, bank, batch_size=6, generator=gen)
    got = []
    for batch in it:
        torch.rand(10, generator=gen)  # someone else uses the generator mid-epoch
        got.append(batch)
    for x, y in zip(ref, got, strict=True):
        assert torch.equal(x["input_ids"], y["input_ids"])
        assert torch.equal(x["image_index"], y["image_index"])


def test_itm_negatives_cover_all_wrong_classes():
    labels = torch.zeros(2000, dtype=torch.int64)
    visual = torch.zeros(2000, 1, 2)
    bank = build_caption_bank(TOK, TASK, "train")
    batches = _epoch(itm_batches, visual, labels, bank, batch_size=500, generator=0)
    neg = torch.cat([b["caption_labels"][b["itm_labels"] == 0] for b in batches])
    counts = torch.bincount(neg, minlength=10)
    assert counts[0] == 0
    assert counts[1:].min() > 150 and counts[1:].max() < 300  # ≈ 222 each


def test_itm_rejects_bad_arguments(data):
    visual, labels = data
    bank = build_caption_bank(TOK, TASK, "train")
    with pytest.raises(ValueError, match="must be even.*got 7"):
        itm_batches(visual, labels, bank, batch_size=7, generator=0)
    with pytest.raises(ValueError, match="batch_size=0"):
        itm_batches(visual, labels, bank, batch_size=0, generator=0)
    with pytest.raises(ValueError, match="labels must be"):
        itm_batches(visual, labels.int(), bank, batch_size=4, generator=0)
    with pytest.raises(ValueError, match="10 classes"):
        itm_batches(visual, labels + 5, bank, batch_size=4, generator=0)
    with pytest.raises(ValueError, match="visual_embeds must be"):
        itm_batches(visual[:, 0], labels, bank, batch_size=4, generator=0)
    with pytest.raises(TypeError, match="seed must be"):
        as_generator(1.5)


def test_drop_last_and_no_shuffle(data):
    visual, labels = data
    bank = build_caption_bank(TOK, TASK, "val")
    kept = _epoch(itm_batches, visual, labels, bank, batch_size=8, generator=0, drop_last=True)
    assert [b["itm_labels"].numel() for b in kept] == [8] * 9
    plain = _epoch(vqa_batches, visual, labels, build_question_bank(TOK, TASK, "val"),
                   batch_size=10, generator=0, shuffle=False)  # fmt: skip
    assert torch.equal(torch.cat([b["image_index"] for b in plain]), torch.arange(N))


def test_vqa_targets_and_families(data):
    visual, labels = data
    bank = build_question_bank(TOK, TASK, "train")
    batches = _epoch(vqa_batches, visual, labels, bank, batch_size=10, generator=0)
    seen = torch.cat([b["image_index"] for b in batches])
    assert sorted(seen.tolist()) == list(range(N))
    families = torch.cat([b["question_family"] for b in batches])
    assert torch.bincount(families, minlength=3).tolist() == [13, 12, 12]  # 37 = 13+12+12
    vocab = TASK.answer_vocab
    for b in batches:
        B = b["labels"].numel()
        assert b["vqa_targets"].shape == (B, len(vocab)) and b["vqa_targets"].dtype == torch.float32
        torch.testing.assert_close(b["vqa_targets"].sum(1), torch.ones(B))
        assert torch.equal(b["vqa_targets"].argmax(1), b["answer_labels"])
        texts = _text_rows(bank.tokens, b)
        rows = zip(texts, b["question_family"], b["labels"], b["answer_labels"], strict=True)
        for text, fam, lab, ans in rows:
            fam, lab, ans = int(fam), int(lab), int(ans)
            family = TASK.questions[fam]
            assert text in family.prompts.for_split("train")
            assert vocab[ans] == family.answers[lab]
        torch.testing.assert_close(b["visual_embeds"][:, 0, 0], b["image_index"].float())


def test_vqa_test_split_uses_only_held_out_phrasings(data):
    visual, labels = data
    bank = build_question_bank(TOK, TASK, "test")
    assert set(bank.tokens.texts) == {
        f.prompts.phrasings[f.prompts.held_out] for f in TASK.questions
    }
    texts = [t for b in vqa_batches(visual, labels, bank, batch_size=16, generator=3)
             for t in _text_rows(bank.tokens, b)]  # fmt: skip
    assert set(texts) <= set(bank.tokens.texts) and len(texts) == N


def test_vqa_deterministic(data):
    visual, labels = data
    bank = build_question_bank(TOK, TASK, "train")
    a = _epoch(vqa_batches, visual, labels, bank, batch_size=9, generator=11)
    b = _epoch(vqa_batches, visual, labels, bank, batch_size=9, generator=11)
    for x, y in zip(a, b, strict=True):
        for k in x:
            assert torch.equal(x[k], y[k]), k


def test_inputs_are_not_mutated(data):
    visual, labels = data
    v0, l0 = visual.clone(), labels.clone()
    bank = build_caption_bank(TOK, TASK, "train")
    ids0 = bank.tokens.input_ids.clone()
    for b in itm_batches(visual, labels, bank, batch_size=4, generator=0):
        b["visual_embeds"].add_(1.0)  # a consumer editing its batch in place
        b["input_ids"].zero_()
    assert torch.equal(visual, v0) and torch.equal(labels, l0)
    assert torch.equal(bank.tokens.input_ids, ids0)
