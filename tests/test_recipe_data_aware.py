"""data_aware_refit: a trained recipe's students refitted in their target's Σ-norm.

Laws checked: the refitted student's expected output error under the target's input moments
(``data_aware_imitation_loss``) is ≤ the Frobenius-fitted student's (ALS/SVD final fit) on the
batches that define Σ; teacher, heads and momentum targets are unchanged; the given state is
not modified; ImitateFixed works alike; unknown names and unsupported students are refused.
"""

from __future__ import annotations

import pytest
import torch

from moil.approx import Hybrid, LowRank, OutputHybrid
from moil.backbones import input_moments, vilt
from moil.objectives import ImageTextMatching, data_aware_imitation_loss
from moil.optim import AdamW
from moil.recipes import ImitateFixed, MoIL, Student, data_aware_refit
from moil.solvers import ALSFit, SVDFit
from moil.train import train
from vilt_batches import make_batches


def _error(student_weights, target, moments) -> float:
    keys = [k for k in moments]
    return float(data_aware_imitation_loss({k: student_weights[k] for k in keys}, {k: target[k] for k in keys}, moments))


@pytest.fixture(scope="module")
def trained():
    backbone = vilt.build(vilt.tiny("itm", seed=0))
    recipe = MoIL(
        ImageTextMatching(),
        {"hy": Student(Hybrid(2), refit=ALSFit(iterations=4), final_fit=True),
         "lr": Student(LowRank(2), refit=SVDFit(), final_fit=True)},
        optimizer=AdamW(lr=3e-2), momentum=0.5,
    )
    state = train(recipe, backbone, make_batches(5, seed=0, size=4), steps=5, seed=0)
    return backbone, recipe, state


def test_refit_lowers_the_expected_output_error_and_keeps_the_rest(trained):
    backbone, recipe, state = trained
    batches = make_batches(3, seed=1, size=4)
    before = {k: v.clone() for k, v in state.students["hy"].items()}
    torch.manual_seed(0)
    refit = data_aware_refit(recipe, state, backbone, batches)
    target = recipe.imitation_targets(state, backbone)["hy"]
    torch.manual_seed(0)  # ViLT samples patches: the same draws as inside the refit
    moments = input_moments(backbone, {**target, **state.heads}, batches)
    merged_old = recipe.candidates(state, backbone)
    merged_new = recipe.candidates(refit, backbone)
    for name in ("hy", "lr"):
        old = _error(merged_old[f"student/{name}"], target, moments)
        new = _error(merged_new[f"student/{name}"], target, moments)
        assert new <= old * (1 + 1e-6), (name, old, new)
        assert new < old, (name, old, new)  # anisotropic real inputs: strictly better here
    for k, v in before.items():
        assert torch.equal(state.students["hy"][k], v), k  # the given state is not modified
    for k in state.teacher:
        assert torch.equal(refit.teacher[k], state.teacher[k])
    for m in state.targets:
        for k, v in state.targets[m].target.items():
            assert torch.equal(refit.targets[m].target[k], v)


def test_refit_of_imitate_fixed_and_the_refusals(trained):
    backbone, recipe, state = trained
    fixed = ImitateFixed(dict(state.teacher), state.heads, {"hy": Student(Hybrid(2))})
    fstate = fixed.init(backbone, seed=0)
    out = data_aware_refit(fixed, fstate, backbone, make_batches(2, seed=2, size=4))
    assert any(not torch.equal(out.students["hy"][k], fstate.students["hy"][k]) for k in fstate.students["hy"])
    with pytest.raises(KeyError, match=r"no student \['nope'\]"):
        data_aware_refit(recipe, state, backbone, make_batches(1), only=["nope"])
    odd = ImitateFixed(dict(state.teacher), state.heads, {"out": Student(OutputHybrid(2))})
    with pytest.raises(TypeError, match="OutputHybrid.*no data-aware closed form"):
        data_aware_refit(odd, odd.init(backbone, seed=0), backbone, make_batches(1))
