"""The training loop's options: precision, torch.compile, evaluation, batch sources."""

from __future__ import annotations

import pytest
import torch

from moil.approx import Hybrid
from moil.backbones import vilt
from moil.objectives import ImageTextMatching, itm_accuracy
from moil.optim import AdamW
from moil.recipes import FullFineTune, MoIL
from moil.train import evaluate, train

TASK = ImageTextMatching()
OPT = AdamW(lr=1e-2)


@pytest.fixture(scope="module")
def backbone():
    return vilt.build(vilt.tiny("itm", seed=0))


def batches(n, seed=0, size=4):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "input_ids": torch.randint(0, 99, (size, 7), generator=g),
            "pixel_values": torch.randn(size, 3, 32, 32, generator=g),
            "itm_labels": torch.randint(0, 2, (size,), generator=g),
        }
        for _ in range(n)
    ]


def test_bf16_autocast_keeps_fp32_master_copies(backbone):
    """bf16 autocasts the forward only: teacher, target and student stay fp32 and the
    result stays near the fp32 run (bf16 has ~3 significant digits)."""
    data = batches(2)
    recipe = MoIL(TASK, Hybrid(2), momentum=0.5, optimizer=OPT)
    fp32 = train(recipe, backbone, data, steps=2)
    bf16 = train(recipe, backbone, data, steps=2, precision="bf16")
    for tree in (bf16.teacher, bf16.students["student"], bf16.targets["m0"].target):
        assert all(v.dtype == torch.float32 for v in tree.values())
    for k in fp32.teacher:
        torch.testing.assert_close(bf16.teacher[k], fp32.teacher[k], rtol=0, atol=0.05)
    assert any(not torch.equal(bf16.teacher[k], fp32.teacher[k]) for k in fp32.teacher)


@pytest.mark.slow
def test_compiled_step_matches_eager(backbone):
    """A compiled recipe.step reaches the eager state (fp32). The step is traced whole, forward,
    backward and optimiser, through dynamo and AOTAutograd (backend "aot_eager": every graph
    moil hands the compiler; inductor's own code generation is torch's, and costs a minute
    cold on a 2-core CPU; the CUDA test below runs it)."""
    import functools

    data = batches(2)
    recipe = FullFineTune(TASK, optimizer=OPT)
    eager = train(recipe, backbone, data, steps=2)
    compiled = train(recipe, backbone, data, steps=2,
                     compile=functools.partial(torch.compile, backend="aot_eager", dynamic=False, fullgraph=False))
    for k in eager.teacher:
        torch.testing.assert_close(compiled.teacher[k], eager.teacher[k], rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_inductor_compiled_step_matches_eager_on_cuda():
    """compile=True (inductor) on CUDA reaches the eager state of the same run."""
    model = vilt.build(vilt.tiny("itm", seed=0).to("cuda"))
    data = [{k: v.to("cuda") for k, v in b.items()} for b in batches(2)]
    recipe = FullFineTune(TASK, optimizer=OPT)
    eager = train(recipe, model, data, steps=2)
    compiled = train(recipe, model, data, steps=2, compile=True)
    for k in eager.teacher:
        torch.testing.assert_close(compiled.teacher[k], eager.teacher[k], rtol=1e-4, atol=1e-5)


def test_compile_true_is_inductor_without_dynamic_shapes_and_a_bad_value_is_refused(backbone, monkeypatch):
    """compile=True hands recipe.step to torch.compile(step, dynamic=False); any value other than a
    bool or a function is refused, naming compile."""
    import moil.train as loop

    seen = []

    def record(step, **options):
        seen.append((step.__func__, options))
        return step

    monkeypatch.setattr(loop.torch, "compile", record)
    recipe = FullFineTune(TASK, optimizer=OPT)
    train(recipe, backbone, batches(1), steps=1, compile=True)
    assert seen == [(FullFineTune.step, {"dynamic": False})]
    with pytest.raises(ValueError, match="compile must be True/False or a function.*compile='inductor'"):
        train(recipe, backbone, batches(1), steps=1, compile="inductor")
    with pytest.raises(ValueError, match="compile.step. must return the compiled step.*got None"):
        train(recipe, backbone, batches(1), steps=1, compile=lambda step: None)


def test_evaluate_concatenates_batches(backbone):
    """evaluate() computes each metric over the whole split, equal to a manual forward."""
    data = batches(3)
    params = {**backbone.base(), **backbone.head_params()}
    got = evaluate(backbone, params, data, {"acc": lambda o, b: itm_accuracy(o["itm_logits"], b["itm_labels"])})
    with torch.no_grad():
        logits = torch.cat([backbone(params, b)["itm_logits"] for b in data])
    labels = torch.cat([b["itm_labels"] for b in data])
    assert got["acc"] == pytest.approx(float((logits.argmax(-1) == labels).float().mean()))


def test_batch_function_and_iterable_agree(backbone):
    """A batch function step -> batch and the equivalent list train to the same state."""
    data = batches(3)
    a = train(FullFineTune(TASK, optimizer=OPT), backbone, data, steps=3)
    b = train(FullFineTune(TASK, optimizer=OPT), backbone, lambda step: data[step], steps=3)
    for k in a.teacher:
        assert torch.equal(a.teacher[k], b.teacher[k])


def test_loop_errors(backbone):
    """Too few batches and an unknown precision fail with the fix in the message."""
    with pytest.raises(ValueError, match="ran out at step 1"):  # a one-shot iterator (a list cycles)
        train(FullFineTune(TASK, optimizer=OPT), backbone, iter(batches(1)), steps=2)
    with pytest.raises(ValueError, match="precision"):
        train(FullFineTune(TASK, optimizer=OPT), backbone, batches(1), steps=1, precision="fp8")


def test_global_rng_untouched(backbone):
    """train() draws a step's randomness from (seed, step), not from the caller's RNG."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(FullFineTune(TASK, optimizer=OPT), backbone, batches(1), steps=1)
    assert torch.equal(torch.rand(3), expected)


def test_validate_joins_every_kth_steps_metrics_and_never_changes_training(backbone):
    """validate(state) runs after steps k, 2k, …; its values join those steps' metrics, it
    sees the state just trained, and a run with it ends bitwise equal to one without, even
    when validate draws from the global RNG and runs a forward (dropout, patch sampling)."""
    data = batches(5)
    eval_batches = batches(2, seed=1)
    seen, logged = [], {}

    def validate(state):
        seen.append(state.step)
        torch.rand(3)  # draws from the global RNG: must not leak into the next step
        acc = evaluate(backbone, {**state.teacher, **state.heads}, eval_batches,
                       {"acc": lambda o, b: itm_accuracy(o["itm_logits"], b["itm_labels"])})
        return {"val/acc": acc["acc"]}

    watched = train(FullFineTune(TASK, optimizer=OPT), backbone, data, steps=5, validate=validate,
                    validate_every=2, on_step=lambda step, m: logged.update({step: m}))
    plain = train(FullFineTune(TASK, optimizer=OPT), backbone, data, steps=5)
    assert seen == [2, 4]
    assert [s for s in logged if "val/acc" in logged[s]] == [2, 4]
    assert all("task_loss" in m for m in logged.values())
    for k in plain.teacher:
        assert torch.equal(watched.teacher[k], plain.teacher[k])


@pytest.mark.parametrize("kwargs", [{"validate_every": 2}, {"validate": dict}, {"validate": dict, "validate_every": 0},
                                    {"validate": dict, "validate_every": True}])
def test_validate_needs_a_function_and_a_positive_period(backbone, kwargs):
    with pytest.raises(ValueError, match="validate"):
        train(FullFineTune(TASK, optimizer=OPT), backbone, batches(1), steps=1, **kwargs)


def test_validate_leaves_the_callers_rng_and_may_not_shadow_a_step_metric(backbone):
    """validate draws under its own (seed, step) seed: the caller's global RNG is untouched and
    two runs draw the same values; a name the step already logs (task_loss) is refused."""
    drawn = []

    def validate(state):
        drawn.append(float(torch.rand(())))
        return {"val/x": drawn[-1]}

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(FullFineTune(TASK, optimizer=OPT), backbone, batches(2), steps=2, validate=validate, validate_every=1)
    assert torch.equal(torch.rand(3), expected)
    train(FullFineTune(TASK, optimizer=OPT), backbone, batches(2), steps=2, validate=validate, validate_every=1)
    assert drawn[:2] == drawn[2:] and drawn[0] != drawn[1]
    with pytest.raises(ValueError, match=r"validate returned \['task_loss'\]"):
        train(FullFineTune(TASK, optimizer=OPT), backbone, batches(1), steps=1,
              validate=lambda s: {"task_loss": 0.0}, validate_every=1)


def test_lora_merges_its_weights_in_the_forward_precision(backbone):
    """Under bf16 autocast LoRA's LowRank merge ``W0 + s·B A`` runs in bf16 too (it is cast there at its
    first matmul anyway; PEFT's ``(x A) B`` path is bf16 throughout): the backbone receives bf16
    targets, within two bf16 roundings of the fp32 merge, and the adapter, its moments and the
    trained result stay fp32 and near the fp32 run."""
    from moil.approx import LowRank
    from moil.precision import Autocast
    from moil.recipes import LoRA

    seen = {}

    class Spy:
        def __getattr__(self, name):
            return getattr(backbone, name)

        def __call__(self, params, batch):
            seen.update({k: params[k] for k in backbone.base() if k.endswith(".weight")})
            return backbone(params, batch)

    recipe, data = LoRA(TASK, LowRank(2, scale=0.5), optimizer=OPT), batches(2)
    state, _ = recipe.step(recipe.init(backbone, seed=0), backbone, data[0])  # B != 0
    recipe.step(state, Autocast(Spy(), torch.bfloat16), data[1])
    exact = recipe.adapter(backbone).merge(state.student, backbone.base())
    assert seen and any(not torch.equal(exact[k], backbone.base()[k]) for k in seen)
    views, base = recipe.adapter(backbone).views(state.student), backbone.base()
    for k, w in seen.items():
        assert w.dtype == torch.bfloat16, k
        p = views[k.removesuffix(".weight")]
        # bf16 rounds W0, B and A (2^-9 relative each) and the result once more: the error is
        # at most 2^-8·(|W0| + s|B||A| + |Ŵ|), elementwise, with |B||A| the product of magnitudes.
        bound = 2.0**-8 * (base[k].abs() + 0.5 * p["lora_b"].abs() @ p["lora_a"].abs() + exact[k].abs())
        assert bool(((w.float() - exact[k]).abs() <= bound).all()), k
    fp32 = train(recipe, backbone, data, steps=2)
    bf16 = train(recipe, backbone, data, steps=2, precision="bf16")
    for tree in (bf16.student, bf16.student_opt.exp_avg, bf16.student_opt.exp_avg_sq):
        assert all(v.dtype == torch.float32 for v in tree.values())
    for k in fp32.student:
        torch.testing.assert_close(bf16.student[k], fp32.student[k], rtol=0, atol=0.05)


@pytest.mark.parametrize(
    ("approx", "dtype"),
    [("hybrid", torch.bfloat16), ("transform", torch.bfloat16), ("lowrank", torch.float16), ("hybrid", torch.float16)],
)
def test_other_merges_stay_fp32_under_autocast(backbone, approx, dtype):
    """Law: every merge but LowRank's under bf16 runs in fp32 — a Hybrid's bias is an addmv,
    which CPU autocast leaves in fp32, and fp16 has no loss scaling for the merge's backward —
    so the backbone receives exactly the fp32 merge, and such a LoRA trains to finite fp32
    parameters under that precision."""
    from moil.approx import Hybrid, LowRank, Transform
    from moil.precision import Autocast
    from moil.recipes import LoRA

    seen = {}

    class Spy:
        def __getattr__(self, name):
            return getattr(backbone, name)

        def __call__(self, params, batch):
            seen.update({k: params[k] for k in backbone.base()})
            return backbone(params, batch)

    made = {"hybrid": Hybrid(2), "transform": Transform(2), "lowrank": LowRank(2)}[approx]
    recipe, data = LoRA(TASK, made, optimizer=OPT), batches(2)
    state, _ = recipe.step(recipe.init(backbone, seed=0), backbone, data[0])
    recipe.step(state, Autocast(Spy(), dtype), data[1])
    exact = recipe.adapter(backbone).merge(state.student, backbone.base())
    assert set(exact) <= set(seen)
    for k in exact:
        assert seen[k].dtype == torch.float32 and torch.equal(seen[k], exact[k]), k
    done = train(recipe, backbone, data, steps=2, precision={torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype])
    assert all(v.dtype == torch.float32 and bool(torch.isfinite(v).all()) for v in done.student.values())
