"""moil.harness.data.pairs: NLVR2 statements and VQA over pairs of digits, and their config."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moil.harness.config import ConfigError, parse_config
from moil.harness.data.pair_prompts import NUMBER_WORDS, QUESTIONS, STATEMENTS
from moil.harness.data.pairs import PairSplit, build_text_table, pool_grid
from moil.harness.data.text import load_tokenizer

N = 60


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def make_split(tok, split: str, n: int = N, seed: int = 0) -> PairSplit:
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % 10)[torch.randperm(n, generator=gen)]
    embeds = torch.randn(n, 4, 8, generator=gen)
    return PairSplit(labels, embeds, build_text_table(tok, STATEMENTS, split), build_text_table(tok, QUESTIONS, split))


def decode(tok, ids: torch.Tensor) -> str:
    return tok.decode(ids, skip_special_tokens=True)


def true_texts(fam, split: str, a: int, b: int) -> set[str]:
    word = fam.values[int(fam.value(torch.tensor(a), torch.tensor(b)))]
    return {p.format(word) for p in fam.prompts.for_split(split)}


def all_nlvr2(part: PairSplit, seed: int) -> dict:
    batches = list(part.nlvr2_batches(batch_size=10, generator=seed))
    return {k: torch.cat([b[k] for b in batches]) for k in ("pair_family", "digits", "pair_labels")}


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_statements_are_true_then_a_one_word_false_twin(seed, tok):
    """Law: rows 2i / 2i+1 show the same pair; row 2i's statement holds for its digits, row
    2i+1's is the same phrasing with exactly one token changed and does not hold; labels are
    exactly half true."""
    part = make_split(tok, "train")
    for batch in part.nlvr2_batches(batch_size=10, generator=seed):
        assert batch["pair_labels"].tolist() == [1, 0] * 5
        torch.testing.assert_close(batch["visual_embeds"][0::2], batch["visual_embeds"][1::2], rtol=0, atol=0)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        assert torch.equal(mask[0::2], mask[1::2])
        assert ((ids[0::2] != ids[1::2]).sum(1) == 1).all()
        for r in range(0, 10, 2):
            fam = STATEMENTS[int(batch["pair_family"][r])]
            a, b = (int(d) for d in batch["digits"][r])
            truths = true_texts(fam, "train", a, b)
            assert decode(tok, ids[r]) in truths and decode(tok, ids[r + 1]) not in truths


def test_pairs_stay_in_the_split_and_show_both_images(tok):
    part = make_split(tok, "val")
    for batch in part.vqa_batches(batch_size=16, generator=3):
        first, second = batch["image_index"].unbind(1)
        assert (first != second).all() and int(batch["image_index"].max()) < N
        want = torch.cat([part.visual_embeds[first], part.visual_embeds[second]], dim=1)
        torch.testing.assert_close(batch["visual_embeds"], want, rtol=0, atol=0)
        assert torch.equal(batch["digits"], torch.stack([part.labels[first], part.labels[second]], 1))
        assert batch["visual_attention_mask"].shape == (first.numel(), 8)


def test_vqa_answers_are_the_relation_of_the_two_digits(tok):
    part = make_split(tok, "train")
    seen = set()
    for batch in part.vqa_batches(batch_size=16, generator=1):
        a, b = batch["digits"].unbind(1)
        for i, f in enumerate(batch["question_family"].tolist()):
            assert int(batch["answer_labels"][i]) == int(QUESTIONS[f].value(a[i], b[i]))
            assert decode(tok, batch["input_ids"][i]).rstrip("?").strip() in {
                p.rstrip("?").strip() for p in QUESTIONS[f].prompts.for_split("train")}
            seen.add(f)
        assert torch.equal(batch["vqa_targets"].argmax(1), batch["answer_labels"])
        assert batch["vqa_targets"].shape[1] == len(NUMBER_WORDS) and (batch["vqa_targets"].sum(1) == 1).all()
    assert seen == set(range(len(QUESTIONS)))


def test_families_are_balanced_and_equal_pairs_are_at_least_half(tok):
    part = make_split(tok, "train", n=200)
    out = all_nlvr2(part, seed=5)
    fam = out["pair_family"][0::2]
    assert torch.bincount(fam).tolist() == [50, 50, 50, 50]
    digits = out["digits"][0::2]
    equal = digits[fam == 3]
    assert (equal[:, 0] == equal[:, 1]).float().mean() >= 0.5


def test_test_split_reads_only_the_held_out_phrasing(tok):
    for split in ("train", "test"):
        part = make_split(tok, split)
        texts = set()
        for batch in part.nlvr2_batches(batch_size=20, generator=0):
            texts |= {decode(tok, row) for row in batch["input_ids"]}
        held = {STATEMENTS[0].prompts.phrasings[-1].format(w) for w in NUMBER_WORDS}
        assert bool(texts & held) == (split == "test")


def _words(text: str) -> set[str]:
    return set("".join(c if c.isalpha() else " " for c in text).split())


@pytest.mark.parametrize("fam", QUESTIONS, ids=lambda f: f.name)
def test_a_held_out_question_keeps_a_word_only_its_family_trains_on(fam):
    """The test phrasing shares a word with its family's training phrasings that no other
    family's training phrasing has, and differs from each training phrasing in ≥ 3 words (the
    symmetric difference of their word sets): test rewords a relation the model was taught; it
    neither asks for a synonym it never saw nor repeats a training question."""
    (held,) = fam.prompts.for_split("test")
    own = set().union(*(_words(p) for p in fam.prompts.for_split("train")))
    others = set().union(*(_words(p) for f in QUESTIONS if f is not fam for p in f.prompts.for_split("train")))
    assert _words(held) & (own - others), held
    assert all(len(_words(held) ^ _words(p)) >= 3 for p in fam.prompts.for_split("train")), held


def test_same_seed_same_batches_other_seed_other_pairs(tok):
    part = make_split(tok, "train")
    one, two, other = (next(part.nlvr2_batches(batch_size=20, generator=s)) for s in (7, 7, 8))
    for key in one:
        assert torch.equal(one[key], two[key])
    assert not torch.equal(one["image_index"], other["image_index"])


def test_pool_grid_averages_each_quarter_of_the_grid():
    x = torch.arange(16, dtype=torch.float32).reshape(1, 16, 1)  # 4 x 4 grid, row-major
    torch.testing.assert_close(pool_grid(x).flatten(), torch.tensor([2.5, 4.5, 10.5, 12.5]), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="not a square grid"):
        pool_grid(torch.zeros(1, 5, 3))


def test_odd_batch_is_refused_with_the_fix(tok):
    part = make_split(tok, "train")
    with pytest.raises(ValueError, match="data.batch_size = 9 must be even.*use data.batch_size = 10"):
        next(part.nlvr2_batches(batch_size=9, generator=0))


def _config(**changes) -> dict:
    raw = {"data": {"dataset": "digit-pairs", "limit": 40, "batch_size": 8}, "model": {"family": "tiny"},
           "train": {"steps": 2, "seeds": [0], "tasks": ["nlvr2", "vqa"], "threads": 1},
           "arms": [{"name": "head", "recipe": "head", "lr": 1e-3}, {"name": "full", "recipe": "full", "lr": 1e-3}]}
    for key, value in changes.items():
        table, field = key.split("__")
        raw[table][field] = value
    return raw


@pytest.mark.parametrize(("changes", "message"), [
    ({"train__tasks": ["itm"]}, r"train.tasks \['itm'\] do not run on data.dataset = 'digit-pairs'.*use tasks 'nlvr2'"),
    ({"data__dataset": "digits", "train__tasks": ["nlvr2"]}, r"train.tasks 'nlvr2'.*data.dataset = 'digit-pairs'"),
    ({"data__batch_size": 7, "train__tasks": ["nlvr2"]}, r"data.batch_size = 7 must be even.*use data.batch_size = 8"),
])
def test_bad_pair_configs_name_the_field_value_and_fix(changes, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(_config(**changes))


@pytest.mark.slow
def test_a_grid_runs_both_pair_tasks_on_the_real_digits(tmp_path):
    from moil.harness.grid import run_grid

    results = run_grid(parse_config(_config()), tmp_path)
    got = {(r["task"], r["arm"]): r["candidates"] for r in results["runs"]}
    assert set(got) == {(t, a) for t in ("nlvr2", "vqa") for a in ("head", "full")}
    for (task, _), candidates in got.items():
        metric = "accuracy" if task == "nlvr2" else "vqa_score"
        for scores in candidates.values():
            assert 0.0 <= scores["test"][metric] <= 1.0 and 0.0 <= scores["val"][metric] <= 1.0


@pytest.mark.parametrize(("arm", "message"), [
    ({"recipe": "full", "lr": 1e-4, "head_lr": 3e-3, "head_lr_scale": 10.0},
     r"head_lr = 0.003 and head_lr_scale = 10.0 both set.*keep one"),
    ({"recipe": "head", "lr": 1e-3, "head_lr": 3e-3}, r"recipe = 'head'.*set lr = 0.003 and remove head_lr"),
    ({"recipe": "lora", "lr": 1e-4, "head_lr": 0.0}, r"head_lr must be > 0"),
])
def test_bad_head_lr_names_the_field_value_and_fix(arm, message):
    raw = _config()
    raw["arms"] = [{"name": "a", **arm}]
    with pytest.raises(ConfigError, match=message) as err:
        parse_config(raw)
    assert "$.arms[0].head_lr" in str(err.value)


def test_head_lr_gives_every_arm_the_same_absolute_head_rate():
    """Law: with ``head_lr`` set, the heads' rate ``lr × head_scale(lr)`` is ``head_lr`` for any ``lr``."""
    from moil.harness.build import build_recipe

    raw = _config()
    raw["arms"] = [{"name": "full", "recipe": "full", "lr": [1e-5, 3e-4], "head_lr": 3e-3},
                   {"name": "lora", "recipe": "lora", "lr": 1e-3, "head_lr": 3e-3}]
    config = parse_config(raw)
    for arm in config.arms:
        for lr in arm.learning_rates("vqa"):
            assert arm.head_scale(lr) * lr == pytest.approx(3e-3, rel=1e-12)
            assert build_recipe(arm, "vqa", lr, 10).head_lr_scale == pytest.approx(3e-3 / lr, rel=1e-12)
    assert parse_config(_config()).arms[1].head_scale(1e-3) == 1.0


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), task=st.sampled_from(["nlvr2", "vqa"]))
def test_family_scores_average_back_to_the_split_score(seed, task, tok):
    """Law: each family's score is the task metric on that family's rows only, so their mean
    weighted by row counts equals the whole split's score (any logits)."""
    from moil.harness.data.pairs import PairData, PairTaskText
    from moil.harness.scoring import METRICS, PRIMARY_METRIC, family_metrics

    part = make_split(tok, "val")
    data = PairData("digit-pairs", PairTaskText(), part, part, part)
    batches = list(getattr(part, f"{task}_batches")(batch_size=10, generator=seed))
    batch = {k: torch.cat([b[k] for b in batches]) for k in batches[0] if k not in ("input_ids", "attention_mask", "token_type_ids")}
    n = next(iter(batch.values())).shape[0]
    gen = torch.Generator().manual_seed(seed)
    out = {"pair_logits": torch.randn(n, 2, generator=gen)} if task == "nlvr2" else \
        {"vqa_logits": torch.randn(n, len(NUMBER_WORDS), generator=gen)}
    fams = family_metrics(data, task)
    key = "pair_family" if task == "nlvr2" else "question_family"
    names = [f.name for f in (STATEMENTS if task == "nlvr2" else QUESTIONS)]
    assert list(fams) == [f"{PRIMARY_METRIC[task]}/{name}" for name in names]
    counts = torch.bincount(batch[key], minlength=len(names)).double()
    weighted = sum(float(fn(out, batch)) * counts[i] for i, fn in enumerate(fams.values())) / counts.sum()
    whole = float(METRICS[task][PRIMARY_METRIC[task]](out, batch))
    assert weighted == pytest.approx(whole, abs=1e-6)


@pytest.mark.parametrize("pairs", [1, 3])
def test_eval_pairs_sets_how_many_pairs_each_image_starts(pairs, tok):
    """Law: an evaluation split holds ``eval_pairs · N`` pairs (NLVR2: twice as many rows), each
    image first in exactly ``eval_pairs`` of them, and the draw is fixed (same batches twice)."""
    from moil.harness.data.pairs import PairData, PairTaskText

    part = make_split(tok, "val")
    data = PairData("digit-pairs", PairTaskText(), part, part, part, eval_pairs=pairs)
    for task, per_pair in (("vqa", 1), ("nlvr2", 2)):
        batches = data.eval_batches("val", task, 16, torch.device("cpu"))
        firsts = torch.cat([b["image_index"][::per_pair, 0] for b in batches])
        assert torch.equal(torch.bincount(firsts, minlength=N), torch.full((N,), pairs))
        again = data.eval_batches("val", task, 16, torch.device("cpu"))
        assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again))


def test_bad_eval_pairs_names_the_field():
    with pytest.raises(ConfigError, match=r"eval_pairs"):
        parse_config(_config(data__eval_pairs=0))
