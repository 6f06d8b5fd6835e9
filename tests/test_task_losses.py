"""Tests for moil.objectives.tasks and moil.objectives.metrics: task losses and their metrics."""

from __future__ import annotations

import math

import attrs
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from moil.objectives import (
    ContrastiveRetrieval,
    ImageTextMatching,
    PairClassification,
    VQAScore,
    itm_accuracy,
    recall_at_k,
    vqa_score,
)

SETTINGS = settings(derandomize=True, max_examples=25, deadline=None)
TOL = dict(rtol=1e-6, atol=1e-6)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


# ----------------------------------------------------------------------------- ITM / pairs


def test_itm_uniform_logits_give_log_two():
    """Equal logits for both classes: CE = log 2, whatever the labels."""
    out = {"itm_logits": torch.zeros(4, 2)}
    batch = {"itm_labels": torch.tensor([0, 1, 1, 0])}
    assert_close(ImageTextMatching()(out, batch), torch.tensor(math.log(2)), **TOL)


def test_itm_separated_logits_give_small_loss_and_wrong_ones_large():
    """Logits ±10 on the right class: CE = log(1 + e^-20) ≈ 2e-9; on the wrong class ≈ 20."""
    labels = torch.tensor([1, 0])
    right = torch.tensor([[-10.0, 10.0], [10.0, -10.0]], dtype=torch.float64)
    loss = ImageTextMatching()({"itm_logits": right}, {"itm_labels": labels})
    assert_close(
        loss, torch.tensor(math.log1p(math.exp(-20)), dtype=torch.float64), rtol=1e-6, atol=0
    )
    wrong = ImageTextMatching()({"itm_logits": -right}, {"itm_labels": labels})
    assert_close(wrong, torch.tensor(20.0, dtype=torch.float64), rtol=1e-6, atol=1e-5)


def test_keys_are_configurable_and_looked_up_in_outputs_then_batch():
    """Fields name the dict keys; a key may come from outputs or batch."""
    loss = ImageTextMatching(logits="z", labels="y")
    both_in_outputs = loss({"z": torch.zeros(2, 2), "y": torch.tensor([0, 1])}, {})
    assert_close(both_in_outputs, torch.tensor(math.log(2)), **TOL)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        loss.logits = "other"


def test_missing_key_lists_available_keys():
    """A missing key error names the key, the keys present and the field to set."""
    with pytest.raises(
        KeyError, match=r"'itm_logits'.*\['logits'\].*\['itm_labels'\].*logits='<key>'"
    ):
        ImageTextMatching()({"logits": torch.zeros(1, 2)}, {"itm_labels": torch.tensor([0])})


def test_itm_and_pair_bad_inputs_raise():
    """Wrong logits width, one-hot or float labels, and out-of-range labels raise with the fix."""
    itm = ImageTextMatching()
    with pytest.raises(ValueError, match=r"'itm_logits' must have shape \(B, 2\), got \(3, 3\)"):
        itm({"itm_logits": torch.zeros(3, 3)}, {"itm_labels": torch.zeros(3, dtype=torch.long)})
    with pytest.raises(ValueError, match="not one-hot"):
        itm({"itm_logits": torch.zeros(3, 2)}, {"itm_labels": torch.zeros(3, 2, dtype=torch.long)})
    with pytest.raises(TypeError, match=r"\.long\(\)"):
        itm({"itm_logits": torch.zeros(3, 2)}, {"itm_labels": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"values in \[0, 2\].*\[0, 1\]"):
        itm({"itm_logits": torch.zeros(3, 2)}, {"itm_labels": torch.tensor([0, 2, 1])})
    with pytest.raises(ValueError, match="batch size 0"):
        itm({"itm_logits": torch.zeros(0, 2)}, {"itm_labels": torch.zeros(0, dtype=torch.long)})
    with pytest.raises(ValueError, match="C >= 2"):
        PairClassification()(
            {"pair_logits": torch.zeros(2, 1)}, {"pair_labels": torch.zeros(2, dtype=torch.long)}
        )


@SETTINGS
@given(seed=seeds, b=st.integers(1, 6), c=st.integers(2, 5))
def test_pair_classification_is_cross_entropy(seed, b, c):
    """PairClassification = −mean_b log softmax(z_b)[y_b], computed by hand."""
    g = torch.Generator().manual_seed(seed)
    z, y = torch.randn(b, c, generator=g), torch.randint(0, c, (b,), generator=g)
    expected = -torch.log_softmax(z, -1)[torch.arange(b), y].mean()
    assert_close(PairClassification()({"pair_logits": z}, {"pair_labels": y}), expected, **TOL)


@SETTINGS
@given(seed=seeds, b=st.integers(1, 6), c=st.integers(2, 5), eps=st.floats(1e-3, 5.0))
def test_cross_entropy_is_sqrt2_lipschitz(seed, b, c, eps):
    """|CE(z, y) − CE(z', y)| ≤ √2‖z − z'‖₂ per example (∇_z CE = softmax(z) − e_y, norm ≤ √2),
    so batch losses differ by ≤ √2·mean_b ‖z_b − z'_b‖: a Lipschitz loss inherits the bound."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, c, generator=g, dtype=torch.float64)
    z2 = z + eps * torch.randn(b, c, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (b,), generator=g)
    gap = (
        PairClassification()({"pair_logits": z}, {"pair_labels": y})
        - PairClassification()({"pair_logits": z2}, {"pair_labels": y})
    ).abs()
    assert gap <= math.sqrt(2) * (z - z2).norm(dim=-1).mean() * (1 + 1e-12)


# ----------------------------------------------------------------------------- contrastive


def _info_nce_reference(img, txt, scale):
    """Direct loops: mean over rows of −log softmax of the positive, both directions."""
    ii, tt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
    b = img.shape[0]
    i2t = [-(scale * ii[k] @ tt.T).log_softmax(0)[k] for k in range(b)]
    t2i = [-(scale * tt[k] @ ii.T).log_softmax(0)[k] for k in range(b)]
    return (torch.stack(i2t).mean() + torch.stack(t2i).mean()) / 2


@SETTINGS
@given(seed=seeds, b=st.integers(1, 6), e=st.integers(1, 5), tau=st.floats(0.01, 2.0))
def test_info_nce_matches_reference_and_is_symmetric(seed, b, e, tau):
    """Loss = ½(CE(sĨT̃ᵀ, diag) + CE(sT̃Ĩᵀ, diag)), s = 1/τ; swapping image and text changes
    nothing."""
    g = torch.Generator().manual_seed(seed)
    img, txt = (
        torch.randn(b, e, generator=g, dtype=torch.float64),
        torch.randn(b, e, generator=g, dtype=torch.float64),
    )
    loss = ContrastiveRetrieval(temperature=tau)
    value = loss({"image_embeds": img, "text_embeds": txt}, {})
    assert_close(value, _info_nce_reference(img, txt, 1 / tau), rtol=1e-9, atol=1e-10)
    swapped = loss({"image_embeds": txt, "text_embeds": img}, {})
    assert_close(swapped, value, rtol=1e-12, atol=1e-12)


def test_info_nce_learnable_scale_and_hand_values():
    """exp(outputs[logit_scale]) is the scale; B = 1 gives 0; orthogonal pairs at scale s give
    −log(e^s/(e^s+1)) = log(1 + e^−s)."""
    img = torch.eye(2)
    out = {"image_embeds": img, "text_embeds": img, "logit_scale": torch.tensor(math.log(5.0))}
    learn = ContrastiveRetrieval(learnable_logit_scale="logit_scale")
    assert_close(learn(out, {}), torch.tensor(math.log1p(math.exp(-5.0))), **TOL)
    assert_close(learn(out, {}), ContrastiveRetrieval(temperature=0.2)(out, {}), **TOL)
    one = {"image_embeds": torch.ones(1, 3), "text_embeds": -torch.ones(1, 3)}
    assert_close(ContrastiveRetrieval()(one, {}), torch.tensor(0.0), **TOL)


def test_info_nce_bad_inputs_raise():
    """Unequal (B, E), a non-scalar logit scale and a non-positive temperature raise."""
    with pytest.raises(ValueError, match=r"must have the same \(B, E\)"):
        ContrastiveRetrieval()(
            {"image_embeds": torch.ones(2, 3), "text_embeds": torch.ones(3, 3)}, {}
        )
    with pytest.raises(ValueError, match="one number"):
        ContrastiveRetrieval(learnable_logit_scale="s")(
            {"image_embeds": torch.ones(2, 3), "text_embeds": torch.ones(2, 3), "s": torch.ones(2)},
            {},
        )
    with pytest.raises(
        ValueError, match="temperature must be a finite number > 0, got temperature=0"
    ):
        ContrastiveRetrieval(temperature=0)


# ----------------------------------------------------------------------------- VQA


@SETTINGS
@given(seed=seeds, b=st.integers(1, 5), a=st.integers(1, 7))
def test_vqa_loss_is_bce_times_answer_count(seed, b, a):
    """VQAScore = A · mean BCE(z, t) = (1/B) Σ_b Σ_a BCE(z_ba, t_ba) (ViLT)."""
    g = torch.Generator().manual_seed(seed)
    z, t = torch.randn(b, a, generator=g), torch.rand(b, a, generator=g)
    value = VQAScore()({"vqa_logits": z}, {"vqa_targets": t})
    per_entry = -(t * F.logsigmoid(z) + (1 - t) * F.logsigmoid(-z))
    assert_close(value, per_entry.sum(1).mean(), **TOL)
    assert_close(value, F.binary_cross_entropy_with_logits(z, t) * a, **TOL)


def test_vqa_bad_targets_raise():
    """Targets of another shape, outside [0, 1], or integer raise with the fix."""
    loss, z = VQAScore(), {"vqa_logits": torch.zeros(2, 3)}
    with pytest.raises(ValueError, match=r"logits' shape \(B, A\)=\(2, 3\), got \(2, 4\)"):
        loss(z, {"vqa_targets": torch.zeros(2, 4)})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        loss(z, {"vqa_targets": torch.full((2, 3), 1.5)})
    with pytest.raises(TypeError, match="float"):
        loss(z, {"vqa_targets": torch.zeros(2, 3, dtype=torch.long)})


# ----------------------------------------------------------------------------- metrics


def test_itm_accuracy_and_vqa_score_hand_examples():
    """Accuracy counts argmax hits (2 of 3); VQA score averages the top answer's soft target."""
    logits = torch.tensor([[0.0, 1.0], [2.0, -1.0], [0.5, 0.0]])
    assert_close(itm_accuracy(logits, torch.tensor([1, 0, 1])), torch.tensor(2 / 3), **TOL)
    z = torch.tensor([[0.1, 3.0, -1.0], [5.0, 0.0, 0.0]])
    t = torch.tensor([[0.0, 0.6, 1.0], [0.3, 1.0, 0.0]])
    assert_close(vqa_score(z, t), torch.tensor((0.6 + 0.3) / 2), **TOL)


def test_recall_at_k_hand_example():
    """Cosine ranks computed by hand: IR@1 = TR@1 = 2/3, TR@2 = 1, everything hits at k = 3."""
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    txt = torch.tensor([[1.0, 0.1], [0.6, 0.8], [0.0, 1.0]])
    # S[i, t] with unit texts t0 ≈ (.995, .0995), t1 = (.6, .8), t2 = (0, 1):
    #   image 0: (.995, .6, 0)     → best t0, own: hit
    #   image 1: (.0995, .8, 1)    → best t2, own t1 second: miss at k = 1, hit at k = 2
    #   image 2: (-.995, -.6, 0)   → best t2, own: hit
    # Text queries: t0 → image 0 (hit); t1 → image 1 (.8 > .6, hit);
    #   t2: (0, 1, 0) → image 1 first, own image 2 tied second: miss at k = 1.
    r1 = recall_at_k(img, txt, 1)
    assert_close(r1.image_retrieval, torch.tensor(2 / 3), **TOL)
    assert_close(r1.text_retrieval, torch.tensor(2 / 3), **TOL)
    r2 = recall_at_k(img, txt, 2)
    assert_close(r2.text_retrieval, torch.tensor(1.0), **TOL)
    r3 = recall_at_k(img, txt, 3)
    assert r3.image_retrieval == 1 and r3.text_retrieval == 1


def test_recall_at_k_with_several_texts_per_image_and_errors():
    """With text_to_image, TR counts an image as hit if any of its texts ranks in the top k."""
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [1.0, 0.05]])
    r = recall_at_k(img, txt, 1, text_to_image=torch.tensor([0, 1, 1, 0]))
    assert_close(r.text_retrieval, torch.tensor(1.0), **TOL)  # image 1 hits via text 1
    assert_close(r.image_retrieval, torch.tensor(0.75), **TOL)  # text 2 picks image 0: miss
    with pytest.raises(ValueError, match="k must be an integer in"):
        recall_at_k(img, img, 3)
    with pytest.raises(ValueError, match="pass text_to_image"):
        recall_at_k(img, txt, 1)
    with pytest.raises(ValueError, match="every image"):
        recall_at_k(img, txt, 1, text_to_image=torch.tensor([0, 0, 0, 0]))


def test_losses_differentiate_under_torch_func():
    """Every loss is a pure function of the outputs dict: torch.func.grad gives finite gradients
    of the logits' shape (the labels/targets are validated without breaking the transform)."""
    g = torch.Generator().manual_seed(0)
    cases = [
        (ImageTextMatching(), "itm_logits", (3, 2), {"itm_labels": torch.tensor([0, 1, 1])}),
        (PairClassification(), "pair_logits", (3, 2), {"pair_labels": torch.tensor([1, 0, 1])}),
        (VQAScore(), "vqa_logits", (3, 4), {"vqa_targets": torch.rand(3, 4, generator=g)}),
        (ContrastiveRetrieval(), "image_embeds", (3, 5), {"text_embeds": torch.randn(3, 5)}),
    ]
    for loss, key, shape, batch in cases:
        z = torch.randn(shape, generator=g)
        grad = torch.func.grad(lambda out, loss=loss, batch=batch: loss(out, batch))({key: z})
        assert grad[key].shape == shape and torch.isfinite(grad[key]).all()
        assert grad[key].abs().sum() > 0
