"""PeftLowRank: LoRA / DoRA / PiSSA trained through PEFT on a tiny ViLT, checked against PEFT."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from moil.backbones import vilt
from moil.objectives import ImageTextMatching
from moil.optim import AdamW
from moil.recipes.peft_baseline import PEFT_PREFIX, PeftLowRank
from moil.train import train
from vilt_batches import make_batches

pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated")

TASK = ImageTextMatching()
OPT = AdamW(lr=1e-2)
VARIANTS = ("lora", "dora", "pissa")
RANK, ALPHA = 2, 4.0  # scaling s = α/r = 2


@pytest.fixture(scope="module")
def backbone():
    return vilt.build(vilt.tiny("itm", seed=0))


def recipe(variant: str) -> PeftLowRank:
    return PeftLowRank(TASK, RANK, variant=variant, alpha=ALPHA, optimizer=OPT)


def logits(fn, batch):
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(0)  # ViLT samples image patches with torch.multinomial
        return fn(batch)["itm_logits"]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_identity_at_init(backbone, variant):
    """Law: at init the merged weights give the base model's outputs (LoRA/DoRA: B = 0;
    PiSSA: residual + s·B A = W0) and equal W0 up to float error."""
    r = recipe(variant)
    state = r.init(backbone, seed=0)
    merged = r.candidates(state, backbone)["student/student"]
    base = backbone.base()
    for key in base:
        torch.testing.assert_close(merged[key], base[key], rtol=0, atol=1e-5)
    batch = make_batches(1)[0]
    ours = logits(lambda b: backbone(merged, b), batch)
    torch.testing.assert_close(ours, logits(lambda b: backbone({}, b), batch), rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_trained_candidate_matches_peft_forward(backbone, variant):
    """Law: after training, backbone(candidate) on the unmodified model == PEFT's own forward
    with the trained adapter; the adapter and heads changed; the user's model is untouched."""
    before = snapshot(backbone.model)
    grad_flags = {n: p.requires_grad for n, p in backbone.model.named_parameters()}
    r = recipe(variant)
    start = r.init(backbone, seed=0)
    state = train(r, backbone, make_batches(2), steps=2)
    assert state.step == 2
    assert set(state.adapter) == set(start.adapter)
    assert all(not torch.equal(state.adapter[k], start.adapter[k]) for k in state.adapter)
    assert any(not torch.equal(state.heads[k], start.heads[k]) for k in state.heads)

    merged = r.candidates(state, backbone)["student/student"]
    assert set(merged) == set(backbone.base()) | set(backbone.heads)
    peft_model = r.to_peft(state, backbone)
    batch = make_batches(1, seed=5)[0]
    ours = logits(lambda b: backbone(merged, b), batch)
    theirs = logits(lambda b: backbone.outputs(peft_model(**backbone.inputs(b)), b), batch)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert not torch.allclose(ours, logits(lambda b: backbone({}, b), batch), atol=1e-4)

    after = backbone.model.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert all(type(backbone.model.get_submodule(t)) is nn.Linear for t in backbone.targets)
    assert {n: p.requires_grad for n, p in backbone.model.named_parameters()} == grad_flags


@pytest.mark.parametrize("variant", VARIANTS)
def test_merge_by_hand(backbone, variant):
    """Law: the merged weight is the published formula of the state's tensors, s = α/r:
    LoRA W0 + sBA; DoRA m ⊙ (W0 + sBA)/‖W0 + sBA‖_c; PiSSA (W0 − sB₀A₀) + sBA."""
    r = recipe(variant)
    start = r.init(backbone, seed=1)
    g = torch.Generator().manual_seed(3)
    moved = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in start.adapter.items()}
    state = start._replace(params={**start.params, "adapter": moved})
    merged = r.candidates(state, backbone)["student/student"]
    s, base = ALPHA / RANK, backbone.base()
    for t in backbone.targets:
        get = lambda tree, what: tree[f"{PEFT_PREFIX}{t}.{what}.default.weight"]  # noqa: E731
        w0 = base[f"{t}.weight"]
        delta = s * get(state.adapter, "lora_B") @ get(state.adapter, "lora_A")
        if variant == "lora":
            expected = w0 + delta
        elif variant == "dora":
            m = get(state.adapter, "lora_magnitude_vector")
            expected = (m / torch.linalg.norm(w0 + delta, dim=1))[:, None] * (w0 + delta)
        else:
            residual = w0 - s * get(start.adapter, "lora_B") @ get(start.adapter, "lora_A")
            expected = residual + delta
        torch.testing.assert_close(merged[f"{t}.weight"], expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(merged[f"{t}.bias"], base[f"{t}.bias"], rtol=0, atol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_exact_resume(backbone, variant, tmp_path):
    """Law: 2 steps with a checkpoint, stop, resume to 3 == 3 steps straight (bitwise)."""
    batches = make_batches(3)
    r = recipe(variant)
    straight = train(r, backbone, batches, steps=3)
    train(r, backbone, batches, steps=2, run_dir=tmp_path, checkpoint_every=1)
    resumed = train(recipe(variant), backbone, batches, steps=3, run_dir=tmp_path, resume=True)
    assert resumed.step == straight.step == 3
    for field in ("adapter", "heads"):
        a, b = getattr(resumed, field), getattr(straight, field)
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), field
    a, b = resumed.adapter_opt.exp_avg_sq, straight.adapter_opt.exp_avg_sq
    assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.parametrize("variant", VARIANTS)
def test_num_stored_counts_adapter_tensors(backbone, variant):
    """Law: num_stored = Σ numel of the adapter = Σ_t r(in + out) (+ out for DoRA's m)."""
    r = recipe(variant)
    state = r.init(backbone)
    assert r.num_stored(backbone) == sum(v.numel() for v in state.adapter.values())
    per_target = RANK * (32 + 32) + (32 if variant == "dora" else 0)  # q/k/v are (32, 32)
    assert r.num_stored(backbone) == per_target * len(backbone.targets)
    assert r.students_of(state, backbone) == {}


def test_init_is_seeded(backbone):
    """Same seed, same adapter; another seed, another A (LoRA's B starts at 0)."""
    a, b, c = (recipe("lora").init(backbone, seed=s).adapter for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if "lora_A" in k)


def test_bad_arguments_are_refused(backbone):
    with pytest.raises(ValueError, match="variant="):
        PeftLowRank(TASK, 2, variant="vera")
    with pytest.raises(ValueError, match="rank="):
        PeftLowRank(TASK, 0)
    with pytest.raises(ValueError, match="min\\(out, in\\)"):
        PeftLowRank(TASK, 33, variant="pissa").init(backbone)


def test_missing_peft_names_pip(backbone, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match="pip install peft"):
        recipe("lora").init(backbone)


def test_nan_loss_raises(backbone):
    """A non-finite loss raises FloatingPointError naming the step; the state is not updated."""
    r = recipe("dora")
    state = r.init(backbone)
    batch = make_batches(1)[0]
    batch = {**batch, "pixel_values": torch.full_like(batch["pixel_values"], float("nan"))}
    with pytest.raises(FloatingPointError, match="step 0"):
        r.step(state, backbone, batch)


def test_bf16_forward_runs_under_autocast(backbone):
    """precision="bf16" casts PEFT's forward too: the loss moves a little from fp32's, the
    adapter stays fp32."""
    losses = {}
    for precision in ("fp32", "bf16"):
        out = []
        state = train(recipe("lora"), backbone, make_batches(1), steps=1, precision=precision,
                      on_step=lambda step, metrics: out.append(metrics["task_loss"]))
        losses[precision] = out[0]
        assert all(v.dtype == torch.float32 for v in state.adapter.values())
    assert losses["fp32"] != losses["bf16"]
    assert abs(losses["fp32"] - losses["bf16"]) < 1e-2
