"""ImitationObserver: MoIL's imitation riding on a plain PyTorch loop, equal to the recipe."""

from __future__ import annotations

import copy

import pytest
import torch
from vilt_batches import make_batches

from moil.approx import Hybrid, LowRank
from moil.backbones import vilt
from moil.objectives import ImageTextMatching
from moil.observer import ImitationObserver, unwrap
from moil.optim import AdamW
from moil.recipes import MoIL, Student
from moil.train import step_seed, train

TASK = ImageTextMatching()
QKV = vilt.QKV
STEPS = 4


@pytest.fixture(scope="module")
def backbone():
    return vilt.build(vilt.tiny("itm", seed=0))


def students():
    return {"h": Hybrid(2), "l": Student(LowRank(3), momentum=0.8)}


def plain_loop(backbone, observer, batches, *, check_untouched=False):
    """Full fine-tuning of targets + heads by torch.optim.AdamW, the observer between
    backward and step (MoIL's order); the RNG of each step as moil.train sets it."""
    model = copy.deepcopy(backbone.model)
    names = {info for t in backbone.targets for info in (f"{t}.weight", f"{t}.bias")} | set(backbone.heads)
    trained = [p for n, p in model.named_parameters() if n in names]
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
    opt = torch.optim.AdamW(trained, lr=1e-2, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01)
    state = observer.init(model, seed=0)
    for step, batch in enumerate(batches):
        with torch.random.fork_rng():
            torch.manual_seed(step_seed(0, step))
            inputs = backbone.inputs(batch)
            TASK(backbone.outputs(model(**inputs), batch), batch).backward()
        if check_untouched:
            before = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
            grads = [p.grad.clone() for p in trained]
        state, metrics = observer.update(state, model)
        if check_untouched:
            after = model.state_dict(), opt.state_dict()
            assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
            assert str(before[1]) == str(after[1])
            assert all(torch.equal(g, p.grad) for g, p in zip(grads, trained))
        opt.step()
        opt.zero_grad()
    return model, observer.finalize(state, model), metrics


def test_observer_students_equal_the_recipes(backbone):
    """Law: on the same batches and teacher optimiser (torch's AdamW ≡ moil's, tests/test_optim.py),
    the observer in a plain loop trains the same students as the MoIL recipe."""
    batches = make_batches(STEPS)
    opt = AdamW(lr=1e-2)
    recipe = MoIL(TASK, students(), momentum=0.5, optimizer=opt)
    ours = train(recipe, backbone, batches, steps=STEPS)
    observer = ImitationObserver(students(), targets=QKV, momentum=0.5, optimizer=opt)
    model, state, metrics = plain_loop(backbone, observer, batches)
    assert set(metrics) == {"momentum/m0", "momentum/m1", "imitation_loss/h", "distance/h",
                            "imitation_loss/l", "distance/l"}
    for name in ("h", "l"):
        for k, v in ours.students[name].items():
            torch.testing.assert_close(state.students[name][k], v, rtol=1e-4, atol=1e-5)
    for m in ("m0", "m1"):
        for k, v in ours.targets[m].target.items():
            torch.testing.assert_close(state.targets[m].target[k], v, rtol=1e-4, atol=1e-5)


def test_observer_never_changes_model_parameters_or_optimizer(backbone):
    """The observer only reads: model tensors, gradients and optimiser state are bitwise
    unchanged by each update; W0 is a copy, not a view of the trained weights."""
    observer = ImitationObserver(students(), targets=QKV, momentum=0.5, optimizer=AdamW(lr=1e-2))
    model, state, _ = plain_loop(backbone, observer, make_batches(2), check_untouched=True)
    t = backbone.targets[0]
    assert torch.equal(state.base[f"{t}.weight"], backbone.model.get_parameter(f"{t}.weight"))
    assert not torch.equal(state.base[f"{t}.weight"], model.get_parameter(f"{t}.weight"))


def test_unwrap_reads_through_wrappers(backbone):
    """A DataParallel-style wrapper (``.module``) is seen through to the user's model."""
    wrapped = torch.nn.DataParallel(backbone.model)
    assert unwrap(wrapped) is backbone.model
    observer = ImitationObserver(Hybrid(2), targets=QKV, momentum=0.5)
    assert observer.backbone(wrapped).targets == backbone.targets
