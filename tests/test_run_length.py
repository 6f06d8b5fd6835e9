"""Defaults that fit the run: schedules bound to its length, refused when shorter, and a
momentum too slow for the run warned about — never a silent no-op."""

from __future__ import annotations

import warnings

import pytest
from vilt_batches import make_batches

from moil.approx import Hybrid
from moil.backbones import vilt
from moil.momentum import REFERENCE_MOMENTUM, MomentumWarning
from moil.objectives import ImageTextMatching
from moil.optim import AdamW
from moil.recipes import FullFineTune, MoIL, Student
from moil.schedules import HalfLife, WarmupLinearDecay, bind_run
from moil.train import train

TASK = ImageTextMatching()
STEPS = 30


@pytest.fixture(scope="module")
def backbone():
    return vilt.build(vilt.tiny("itm", seed=0))


def covered(recipe, state, backbone) -> float:
    """``1 − ‖W̄ − Ŵ‖² / ‖W̄ − W0‖²``: the share of its target's update the student reproduces."""
    base = backbone.base()
    target = recipe.imitation_targets(state, backbone)["student"]
    merged = recipe.candidates(state, backbone)["student/student"]
    weights = [k for k in base if k.endswith(".weight")]
    gap = sum(float((target[k] - merged[k]).square().sum()) for k in weights)
    update = sum(float((target[k] - base[k]).square().sum()) for k in weights)
    return 1.0 - gap / update


def test_default_moil_moves_its_student(backbone):
    """A default MoIL(task, Hybrid(4)) trained for N steps adapts: its target leaves W0 by
    at least half the teacher's update, and the student reproduces part of it — no warning."""
    recipe = MoIL(TASK, Hybrid(4))  # every default: lr 1e-4 warm-up/decay over the run
    with warnings.catch_warnings():
        warnings.simplefilter("error", MomentumWarning)
        state = train(recipe, backbone, make_batches(STEPS), steps=STEPS, finalize=False)
    base = backbone.base()
    moved = {k: float((state.teacher[k] - base[k]).norm()) for k in base}
    followed = {k: float((state.targets["m0"].target[k] - base[k]).norm()) for k in base}
    assert sum(followed.values()) >= 0.5 * sum(moved.values()) > 0
    assert covered(recipe, state, backbone) > 0.05  # 0.14 measured; 0.9996 would leave it at W0


def test_reference_momentum_on_a_short_run_warns(backbone):
    """Law: Π_{k<N} m_k > 1/2 means the target keeps most of W0 after the run — warned."""
    recipe = MoIL(TASK, Hybrid(2), momentum=REFERENCE_MOMENTUM, optimizer=AdamW(lr=1e-3))
    with pytest.warns(MomentumWarning, match="holds 100% of the pre-trained weights"):
        train(recipe, backbone, make_batches(3), steps=3)
    student = Student(Hybrid(2), momentum=HalfLife(10_000))
    with pytest.warns(MomentumWarning, match="HalfLife"):
        bind_run(MoIL(TASK, {"s": student}), 100)


def test_schedule_shorter_than_the_run_is_refused(backbone):
    """A learning rate that would be 0 for part of the run is refused before any step."""
    recipe = FullFineTune(TASK, optimizer=AdamW(lr=WarmupLinearDecay(1e-3, 5)))
    with pytest.raises(ValueError, match="ends at step 5 but the run has 8 steps"):
        train(recipe, backbone, make_batches(8), steps=8)


def test_run_length_schedules_are_bound_everywhere():
    """bind_run reaches every schedule inside a recipe (teacher, heads, students, momenta)
    and leaves the original untouched."""
    student = Student(Hybrid(2), lr=WarmupLinearDecay(1e-2), momentum=HalfLife(fraction=0.5))
    recipe = MoIL(TASK, {"s": student}, momentum=HalfLife(fraction=0.1))
    bound = bind_run(recipe, 40)
    assert bound.optimizer.lr.total_steps == 40 and recipe.optimizer.lr.total_steps is None
    assert bound.students["s"].lr.total_steps == 40
    assert bound.students["s"].momentum == HalfLife(20.0) and bound.momentum == HalfLife(4.0)
    with pytest.raises(ValueError, match="spans the run"):
        recipe.optimizer.learning_rate(0)


def test_parts_are_built_once_per_backbone(backbone):
    """Adapters, optimisers and momentum targets are built once, not on every step."""
    recipe = MoIL(TASK, {"a": Hybrid(2), "b": Student(Hybrid(2), momentum=0.5)})
    teacher, imitation = recipe.parts(backbone)
    assert recipe.parts(backbone)[1] is imitation
    assert set(imitation.momenta) == {"m0", "m1"}
    assert imitation.followers["b"].target == "m1"
