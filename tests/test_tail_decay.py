"""moil.recipes.TailDecay: the teacher's update beyond a student's rank decays as it trains."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from vilt_batches import make_batches

from moil.approx import LowRank
from moil.backbones import vilt
from moil.harness.config import ConfigError, parse_config
from moil.objectives import ImageTextMatching, best_low_rank
from moil.optim import AdamW
from moil.recipes import FullFineTune, LoRA, MoIL, Student, TailDecay, decay_tail
from moil.solvers import SVDFit
from moil.testing.strategies import weight_shapes, weights
from moil.train import train

TASK = ImageTextMatching()
OPT = AdamW(lr=1e-2)


def pairs():
    return weight_shapes(2, 9).flatmap(lambda s: st.tuples(weights(s), weights(s, scale=0.1), st.integers(1, min(s))))


@settings(max_examples=40, deadline=None)
@given(pairs(), st.floats(0.05, 1.0))
def test_decay_keeps_the_rank_r_part_and_shrinks_the_rest_by_one_minus_strength(case, strength):
    """Law: with Δ = W − W0 and Δ_r its best rank-r part, decay_tail gives W0 + Δ_r + (1 − s)(Δ − Δ_r):
    its distance to W0 + Δ_r is (1 − s)·‖Δ − Δ_r‖ (the Eckart–Young error), and its own best rank-r
    part is still Δ_r."""
    w0, step, r = case
    w = w0 + step
    out = decay_tail(w, w0, r, strength)
    fit = best_low_rank(w - w0, r)
    head = w0 + fit.lora_b @ fit.lora_a
    assert float(torch.linalg.norm(out - head)) == pytest.approx((1 - strength) * float(fit.error), abs=1e-9)
    again = best_low_rank(out - w0, r)
    assert torch.allclose(again.lora_b @ again.lora_a, fit.lora_b @ fit.lora_a, atol=1e-8)


@settings(max_examples=25, deadline=None)
@given(pairs())
def test_full_strength_leaves_an_update_of_rank_at_most_r(case):
    """Law: strength 1 projects W − W0 onto the rank-r matrices (all singular values past r vanish)."""
    w0, step, r = case
    s = torch.linalg.svdvals(decay_tail(w0 + step, w0, r, 1.0) - w0)
    assert float(s[r:].abs().sum()) <= 1e-9 * max(1.0, float(s[0]))


@pytest.fixture(scope="module")
def backbone():
    return vilt.build(vilt.tiny("itm", seed=0))


def test_a_projected_teacher_is_stored_exactly_by_its_svd_student(backbone):
    """strength 1, every step: the teacher's weight update has rank ≤ r after each step, so is its
    momentum-0 target (MoIL's target reads the teacher before the step's update), and a rank-r
    LowRank student SVD-fitted to that target merges to the target's weights exactly."""
    student = Student(LowRank(2), momentum=0.0, refit=SVDFit(), final_fit=True)
    recipe = TailDecay(MoIL(TASK, {"s": student}, momentum=0.0, optimizer=OPT), rank=2)
    state = train(recipe, backbone, make_batches(3), steps=3)
    merged, target = recipe.candidates(state, backbone)["student/s"], state.targets["m0"].target
    base = backbone.base()
    for key, w in state.teacher.items():
        if key.endswith(".weight"):
            assert torch.linalg.matrix_rank((w - base[key]).double(), rtol=1e-6) <= 2, key
            assert torch.allclose(merged[key], target[key], atol=1e-6), key
            assert not torch.equal(target[key], base[key])  # the target did move


def test_decays_only_after_every_kth_step(backbone):
    """every=2: after step 1 the teacher is plain full fine-tuning's, bitwise; after step 2 it is not."""
    data = make_batches(2)
    plain = FullFineTune(TASK, OPT)
    shaped = TailDecay(plain, rank=1, strength=1.0, every=2)
    one, ref = train(shaped, backbone, data, steps=1), train(plain, backbone, data, steps=1)
    assert all(torch.equal(one.teacher[k], ref.teacher[k]) for k in ref.teacher)
    two, ref2 = train(shaped, backbone, data, steps=2), train(plain, backbone, data, steps=2)
    assert any(not torch.equal(two.teacher[k], ref2.teacher[k]) for k in ref2.teacher if k.endswith(".weight"))
    assert all(torch.equal(two.teacher[k], ref2.teacher[k]) for k in ref2.teacher if k.endswith(".bias"))


@pytest.mark.parametrize("kwargs, message", [
    ({"rank": 0}, "rank must be an integer >= 1"),
    ({"rank": 2, "strength": 0.0}, "strength must be a number in \\(0, 1\\]"),
    ({"rank": 2, "strength": 1.5}, "strength must be a number in \\(0, 1\\]"),
    ({"rank": 2, "every": 0}, "every must be an integer >= 1"),
])
def test_bad_arguments_name_the_field_and_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TailDecay(FullFineTune(TASK, OPT), **kwargs)


def test_only_a_full_rank_teacher_can_be_shaped(backbone):
    with pytest.raises(TypeError, match="recipe"):
        TailDecay(LoRA(TASK, LowRank(2)), rank=2)
    with pytest.raises(ValueError, match="rank=99 exceeds target"):
        TailDecay(FullFineTune(TASK, OPT), rank=99).init(backbone)


def test_a_tail_decay_table_on_a_recipe_without_a_teacher_is_refused():
    raw = {"arms": [{"name": "lora", "recipe": "lora", "tail_decay": {"rank": 4}}]}
    with pytest.raises(ConfigError, match="tail_decay.*recipe = 'lora'"):
        parse_config(raw)
    with pytest.raises(ConfigError, match="strength must be in \\(0, 1\\]"):
        parse_config({"arms": [{"name": "m", "recipe": "full", "tail_decay": {"strength": 2.0}}]})
    arm = parse_config({"arms": [{"name": "m", "recipe": "full", "tail_decay": {"rank": 4, "every": 5}}]}).arms[0]
    assert (arm.tail_decay.rank, arm.tail_decay.strength, arm.tail_decay.every) == (4, 1.0, 5)


def test_the_report_never_calls_a_decayed_teacher_plain_full_fine_tuning():
    from moil.harness.report import candidate_label, table_markdown, tail_decayed

    results = {"config": {"arms": [{"name": "shaped", "tail_decay": {"rank": 11}}, {"name": "moil"}]}}
    decayed = tail_decayed(results)
    assert decayed == {"shaped": 11}
    assert candidate_label("teacher", decayed.get("shaped")) == "teacher (full fine-tuning, tail beyond rank 11 decayed)"
    assert candidate_label("teacher", decayed.get("moil")) == "teacher (= full fine-tuning)"
    row = {"task": "nlvr2", "metric": "accuracy", "arm": "shaped", "candidate": "teacher", "primary": False,
           "test_mean": 0.8, "test_std": 0.0, "seeds": 1, "val_mean": None, "lr": 3e-4, "stored_parameters": 1,
           "percent_of_model": 1.0, "train_seconds": 1.0, "peak_memory_mib": 1.0}
    assert "tail beyond rank 11 decayed" in table_markdown([row], decayed)
