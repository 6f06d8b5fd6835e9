"""MoIL, LoRA, FullFineTune and ImitateFixed on a tiny ViLT: each step's maths, checked directly."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from moil.approx import Hybrid, LowRank, Transform
from moil.backbones import vilt
from moil.objectives import ImageTextMatching, best_low_rank, frobenius_distance, imitation_loss
from moil.optim import AdamW
from moil.recipes import FullFineTune, ImitateFixed, LoRA, MoIL, Student
from moil.solvers import ALSFit, Gradient, SVDFit
from moil.train import train
from vilt_batches import make_batches

TASK = ImageTextMatching()
OPT = AdamW(lr=1e-2)


@pytest.fixture(scope="module")
def backbone():
    return vilt.build(vilt.tiny("itm", seed=0))


def assert_trees_equal(a, b, exact=True):
    assert set(a) == set(b)
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            # AdamW divides by √v: where a gradient is tiny, the closed form's and autograd's rounding
            # differ by up to ~1e-7 absolute in the step (seen on AVX2; AVX-512 stayed under 1e-7).
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=5e-7)


def test_moil_step_matches_direct_computation(backbone):
    """Law: one MoIL step = (teacher, heads) ← AdamW(∇task at W); W̄ ← mW̄ + (1−m)W;
    θ ← AdamW(∇θ imitation(Ŵ(θ), W̄_new)) — each part computed here by hand."""
    m = 0.5
    recipe = MoIL(TASK, Hybrid(2), momentum=m, optimizer=OPT)
    batches = make_batches(2)
    s0 = recipe.init(backbone, seed=1)
    with torch.random.fork_rng():
        torch.manual_seed(0)  # ViLT samples image patches in its forward
        s1, _ = recipe.step(s0, backbone, batches[0])
        s2, metrics = recipe.step(s1, backbone, batches[1])

    # Teacher and heads: AdamW on the task gradient, through the teacher.
    def task(tree, batch):
        return TASK(backbone({**tree["teacher"], **tree["heads"]}, batch), batch)

    tree, opt_t, opt_h = {"teacher": s0.teacher, "heads": s0.heads}, OPT.init(s0.teacher), OPT.init(s0.heads)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for batch in batches:
            g = torch.func.grad(task)(tree, batch)
            teacher, opt_t = OPT.update(g["teacher"], opt_t, tree["teacher"])
            heads, opt_h = OPT.update(g["heads"], opt_h, tree["heads"])
            tree = {"teacher": teacher, "heads": heads}
    assert_trees_equal(s2.teacher, tree["teacher"])
    assert_trees_equal(s2.heads, tree["heads"])

    # Target: EMA of the teacher *before* each update.
    base = backbone.base()
    expected_target = {k: m * (m * base[k] + (1 - m) * s0.teacher[k]) + (1 - m) * s1.teacher[k] for k in base}
    assert_trees_equal(s2.targets["m0"].target, expected_target, exact=False)

    # Student: AdamW on the imitation gradient only (no data).
    adapter = backbone.adapter(Hybrid(2))
    theta, opt_s = s0.students["student"], OPT.init(s0.students["student"])
    for target in (s1.targets["m0"].target, s2.targets["m0"].target):
        g = torch.func.grad(lambda p: imitation_loss(adapter.merge(p, base), target))(theta)
        theta, opt_s = OPT.update(g, opt_s, theta)
    assert_trees_equal(s2.students["student"], theta, exact=False)
    assert metrics["momentum/m0"] == m


def test_students_never_change_the_teacher(backbone):
    """Law: the teacher's trajectory is independent of the students — MoIL's teacher
    equals FullFineTune's bitwise under the same optimiser."""
    batches = make_batches(3)
    moil = train(MoIL(TASK, {"a": Hybrid(2), "b": LowRank(4)}, optimizer=OPT), backbone, batches, steps=3)
    full = train(FullFineTune(TASK, optimizer=OPT), backbone, batches, steps=3)
    assert_trees_equal(moil.teacher, full.teacher)
    assert_trees_equal(moil.heads, full.heads)


def test_many_students_equal_separate_runs(backbone):
    """Law: one teacher, k students ≡ k runs with one student each (same names, seed)."""
    batches = make_batches(3)
    students = {
        "h2": Student(Hybrid(2), momentum=0.9),
        "l4": Student(LowRank(4), momentum=0.5, solver=Gradient(steps=3)),
        "t2": Student(Transform(2), momentum=0.9, lr=3e-3),
    }
    joint = train(MoIL(TASK, students, optimizer=OPT), backbone, batches, steps=3)
    assert len(joint.targets) == 2  # equal schedules share one target
    for name, spec in students.items():
        alone = train(MoIL(TASK, {name: spec}, optimizer=OPT), backbone, batches, steps=3)
        assert_trees_equal(joint.students[name], alone.students[name])


def test_exact_resume(backbone, tmp_path):
    """Law: stop after k steps, resume ⇒ bitwise the same state as an uninterrupted run."""
    batches = make_batches(5)
    recipe = MoIL(TASK, {"h": Hybrid(2)}, momentum=0.8, optimizer=OPT)
    straight = train(recipe, backbone, batches, steps=5, finalize=False)

    class Stop(Exception):
        pass

    def stop_at_2(step, metrics):
        if step == 2:
            raise Stop

    with pytest.raises(Stop):
        train(recipe, backbone, batches, steps=5, run_dir=tmp_path, on_step=stop_at_2)
    resumed = train(recipe, backbone, batches, steps=5, run_dir=tmp_path, resume=True, finalize=False)
    assert resumed.step == straight.step == 5
    for field in ("teacher", "heads"):
        assert_trees_equal(getattr(resumed, field), getattr(straight, field))
    assert_trees_equal(resumed.students["h"], straight.students["h"])
    assert_trees_equal(resumed.targets["m0"].target, straight.targets["m0"].target)
    assert_trees_equal(resumed.student_opts["h"].exp_avg_sq, straight.student_opts["h"].exp_avg_sq)


def test_resume_refuses_other_configuration(backbone, tmp_path):
    """A checkpoint of one recipe does not load into another: the error says why."""
    batches = make_batches(2)
    train(MoIL(TASK, Hybrid(2), optimizer=OPT), backbone, batches, steps=1, run_dir=tmp_path)
    with pytest.raises(ValueError, match="does not match"):
        train(MoIL(TASK, LowRank(3), optimizer=OPT), backbone, batches, steps=2, run_dir=tmp_path, resume=True)


def test_nan_loss_raises_and_keeps_last_good_state(backbone, tmp_path):
    """A NaN loss raises FloatingPointError naming the step; the checkpoint holds step k−1's state."""
    batches = make_batches(3)
    batches[2] = {**batches[2], "pixel_values": torch.full_like(batches[2]["pixel_values"], float("nan"))}
    recipe = FullFineTune(TASK, optimizer=OPT)
    with pytest.raises(FloatingPointError, match="step 2"):
        train(recipe, backbone, batches, steps=3, run_dir=tmp_path)
    good = train(recipe, backbone, batches[:2], steps=2)
    saved = train(recipe, backbone, batches, steps=2, run_dir=tmp_path, resume=True)
    assert saved.step == 2
    assert_trees_equal(saved.teacher, good.teacher)


class _LoRALinear(nn.Module):
    """A hand-written LoRA layer: y = x W0ᵀ + b0 + s·x Aᵀ Bᵀ."""

    def __init__(self, base: nn.Linear, a: torch.Tensor, b: torch.Tensor, scale: float):
        super().__init__()
        self.base, self.scale = base, scale
        self.lora_a, self.lora_b = nn.Parameter(a.clone()), nn.Parameter(b.clone())

    def forward(self, x):
        return self.base(x) + self.scale * (x @ self.lora_a.T) @ self.lora_b.T


def test_lora_gradients_equal_a_hand_written_lora_module(backbone):
    """Law: the LoRA recipe's functional gradients equal autograd through nn.Module LoRA
    layers patched into a deep copy of the model (same init, same batch)."""
    approx = LowRank(2, scale=2.0)
    recipe = LoRA(TASK, approx, optimizer=OPT)
    state = recipe.init(backbone, seed=3)
    # Make B non-zero so A's gradient is non-trivial.
    student = {k: v + 0.1 if k.endswith("lora_b") else v for k, v in state.student.items()}
    batch = make_batches(1)[0]
    adapter, base = backbone.adapter(approx), backbone.base()

    grads = torch.func.grad(
        lambda p: TASK(backbone({**adapter.merge(p, base), **state.heads}, batch), batch)
    )(student)

    model = copy.deepcopy(backbone.model)
    layers = {}
    for t in backbone.targets:
        parent, _, leaf = t.rpartition(".")
        owner = model.get_submodule(parent)
        layers[t] = _LoRALinear(getattr(owner, leaf), student[f"{t}::lora_a"], student[f"{t}::lora_b"], 2.0)
        setattr(owner, leaf, layers[t])
    inputs = {k: v for k, v in batch.items() if k != "itm_labels"}
    TASK(backbone.outputs(model(**inputs), batch), batch).backward()
    for t, layer in layers.items():
        torch.testing.assert_close(grads[f"{t}::lora_a"], layer.lora_a.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(grads[f"{t}::lora_b"], layer.lora_b.grad, rtol=1e-4, atol=1e-6)


def test_lora_step_trains_student_and_heads_only(backbone):
    """LoRA: the student and heads change, the model does not."""
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    recipe = LoRA(TASK, LowRank(2), optimizer=OPT)
    s0 = recipe.init(backbone)
    s1 = train(recipe, backbone, make_batches(2), steps=2)
    assert any(not torch.equal(s0.student[k], s1.student[k]) for k in s0.student)
    assert any(not torch.equal(s0.heads[k], s1.heads[k]) for k in s0.heads)
    assert_trees_equal(before, backbone.model.state_dict())


def test_imitate_fixed_with_svd_final_fit_reaches_eckart_young(backbone):
    """Law: ImitateFixed + SVDFit ends at the Eckart–Young floor of the fixed target."""
    base = backbone.base()
    g = torch.Generator().manual_seed(0)
    target = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    spec = Student(LowRank(3), refit=SVDFit(), final_fit=True)
    recipe = ImitateFixed(target, backbone.head_params(), spec, optimizer=OPT)
    state = train(recipe, backbone, [None] * 2, steps=2)
    merged = recipe.candidates(state, backbone)["student/student"]
    weights = [k for k in base if k.endswith(".weight")]
    got = frobenius_distance({k: merged[k] for k in weights}, {k: target[k] for k in weights})
    floor = sum(best_low_rank(target[k] - base[k], 3).error ** 2 for k in weights).sqrt()
    torch.testing.assert_close(got, floor, rtol=1e-4, atol=1e-6)


def test_als_fit_never_worse_than_svd_fit(backbone):
    """Law: ALSFit's Hybrid (shared q/k/v transform) error ≤ SVDFit's LowRank error, and
    more iterations never increase it (each ALS step is an exact minimisation)."""
    base = backbone.base()
    g = torch.Generator().manual_seed(1)
    target = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    weights = [k for k in base if k.endswith(".weight")]

    def error(approx, solver):
        adapter = backbone.adapter(approx)
        params = solver.fit(adapter, base, target, adapter.init(base))
        merged = adapter.merge(params, base)
        return float(frobenius_distance({k: merged[k] for k in weights}, {k: target[k] for k in weights}))

    svd = error(LowRank(2), SVDFit())
    als = [error(Hybrid(2), ALSFit(iterations=n)) for n in (1, 3, 10)]
    assert als[0] <= svd * (1 + 1e-5)
    assert als[1] <= als[0] * (1 + 1e-5) and als[2] <= als[1] * (1 + 1e-5)


def test_periodic_refit_runs_inside_moil(backbone):
    """A student with refit_every=2 is at its target's Eckart–Young optimum right after step 2."""
    spec = Student(LowRank(2), refit=SVDFit(), refit_every=2)
    recipe = MoIL(TASK, {"s": spec}, momentum=0.5, optimizer=OPT)
    state = train(recipe, backbone, make_batches(2), steps=2, finalize=False)
    base, target = backbone.base(), state.targets["m0"].target
    merged = backbone.adapter(LowRank(2)).merge(state.students["s"], base)
    for k in base:
        if k.endswith(".weight"):
            fit = best_low_rank(target[k] - base[k], 2)
            torch.testing.assert_close(torch.linalg.matrix_norm(target[k] - merged[k]), fit.error, rtol=1e-4, atol=1e-6)


def test_student_spec_errors():
    """Bad specs fail where they are written, naming the fix."""
    with pytest.raises(ValueError, match="closed-form solver"):
        Student(LowRank(2), final_fit=True)
    with pytest.raises(ValueError, match="refit_every"):
        Student(LowRank(2), refit=SVDFit(), refit_every=0)
    with pytest.raises(ValueError, match="no students"):
        MoIL(TASK, {})
    with pytest.raises(TypeError, match="students is a list; give one approximation or Student, or name several"):
        MoIL(TASK, [Hybrid(2), LowRank(2)])
    with pytest.raises(ValueError, match="steps"):
        train(FullFineTune(TASK), None, [], steps=-1)


def test_gradient_solver_follows_the_task_step_schedule(backbone):
    """Law: with Gradient(k), all k updates of task step t use lr(t) — the schedule spans the
    run for any k (indexed by the optimiser's update count it would end after T/k steps)."""
    from moil.schedules import WarmupLinearDecay

    base = backbone.base()
    g = torch.Generator().manual_seed(0)
    target = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    adapter = backbone.adapter(LowRank(2))
    params = adapter.init(base, generator=torch.Generator().manual_seed(1))
    schedule = WarmupLinearDecay(1e-2, 4, warmup=0)  # lr(3) = peak / 4 > 0
    opt = AdamW(lr=schedule)
    state = opt.init(params)
    state = state._replace(step=3 * 5)  # as after three task steps of k = 5
    new, _, _ = Gradient(steps=5).update(adapter, base, params, state, opt, target, step=3)
    assert any(not torch.equal(new[k], params[k]) for k in params)
    # By hand: five AdamW updates at lr(3).
    fixed = AdamW(lr=schedule(3))
    expected, s = params, state
    for _ in range(5):
        grads = torch.func.grad(lambda p: imitation_loss(adapter.merge(p, base), target))(expected)
        expected, s = fixed.update(grads, s, expected)
    assert_trees_equal(new, expected, exact=False)


def test_bf16_model_trains_and_every_candidate_runs():
    """A bf16 model: the momentum target accumulates in float32 (``accumulation_dtype``),
    and every candidate — student, teacher and target, the last cast back to the model's
    dtype — runs through the bf16 backbone; the target is the float32 EMA rounded once."""
    bb = vilt.build(vilt.tiny("itm", seed=0).to(torch.bfloat16))
    recipe = MoIL(TASK, Hybrid(2), momentum=0.9, optimizer=OPT)
    state = recipe.init(bb, seed=1)
    low = lambda b: {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in b.items()}  # noqa: E731
    batches = [low(b) for b in make_batches(2)]
    for batch in batches:
        state, _ = recipe.step(state, bb, batch)
    target = state.targets["m0"].target
    assert {w.dtype for w in target.values()} == {torch.float32}
    candidates = recipe.candidates(recipe.finalize(state, bb), bb)
    assert set(candidates) == {"student/student", "teacher", "target/m0"}
    for name, params in candidates.items():
        out = bb(params, batches[0])
        assert out["itm_logits"].dtype == torch.bfloat16 and out["itm_logits"].isfinite().all(), name
    for k, w in target.items():
        assert torch.equal(candidates["target/m0"][k], w.to(torch.bfloat16)), k
