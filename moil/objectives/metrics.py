r"""Evaluation metrics matching the task losses: pure functions of tensors.

* :func:`itm_accuracy` — argmax accuracy (image–text matching, NLVR2 pairs);
* :func:`vqa_score` — VQAv2 soft accuracy of the top answer;
* :func:`recall_at_k` — retrieval recall in both directions (IR and TR).

Each returns 0-dim float tensors in ``[0, 1]`` and never needs gradients.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from moil.objectives.tasks import check_labels, check_logits

__all__ = ["itm_accuracy", "vqa_score", "Recall", "recall_at_k"]


@torch.no_grad()
def itm_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    r"""Fraction of examples whose argmax logit is the label: ``mean_b [argmax z_b = y_b]``.

    Used for image–text matching (``C = 2``) and pair classification (NLVR2).

    Args:
      logits: ``(B, C)``, floating.
      labels: ``(B,)``, integer in ``[0, C)``.

    Returns:
      0-dim float tensor in ``[0, 1]``.
    """
    check_logits("itm_accuracy", "logits", logits)
    check_labels("itm_accuracy", "labels", labels, logits.shape[0], logits.shape[1])
    return (logits.argmax(dim=-1) == labels).float().mean()


@torch.no_grad()
def vqa_score(logits: Tensor, targets: Tensor) -> Tensor:
    r"""VQA soft accuracy: ``(1/B) Σ_b t_{b, argmax_a z_{ba}}``.

    Each question scores the soft target of its top-scoring answer (VQAv2's
    ``min(1, #humans who gave it / 3)``), as ViLT's ``compute_vqa_score``.

    Args:
      logits: ``(B, A)``, floating.
      targets: ``(B, A)``, floating soft scores in ``[0, 1]``.

    Returns:
      0-dim float tensor in ``[0, 1]``.
    """
    check_logits("vqa_score", "logits", logits)
    if targets.shape != logits.shape or not targets.is_floating_point():
        raise ValueError(
            f"vqa_score: targets must be floating with the logits' shape {tuple(logits.shape)}, "
            f"got {tuple(targets.shape)} {targets.dtype}."
        )
    top = logits.argmax(dim=-1, keepdim=True)
    return targets.gather(-1, top).float().mean()


class Recall(NamedTuple):
    """Recall@k in both retrieval directions.

    Attributes:
      image_retrieval: IR@k — fraction of text queries whose image is in the top ``k`` images.
      text_retrieval: TR@k — fraction of image queries with one of their texts in the top ``k``.
    """

    image_retrieval: Tensor
    text_retrieval: Tensor


@torch.no_grad()
def recall_at_k(
    image_embeds: Tensor, text_embeds: Tensor, k: int, *, text_to_image: Tensor | None = None
) -> Recall:
    r"""Retrieval recall@k on cosine similarity, image→text and text→image.

    With ``S = Ĩ T̃ᵀ`` ``(N_i, N_t)`` of L2-normalised embeddings and ``g(t)`` the
    image of text ``t``:

    * IR@k: ``mean_t [ #{i : S_{i t} > S_{g(t) t}} < k ]``;
    * TR@k: ``mean_i [ #{t : S_{i t} > max_{t': g(t') = i} S_{i t'}} < k ]``.

    A hit means the (best) positive ranks within the first ``k``; ties count in
    the query's favour, so the result is deterministic. The similarity matrix is
    formed whole: ``N_i·N_t`` floats.

    Args:
      image_embeds: ``(N_i, E)``, floating.
      text_embeds: ``(N_t, E)``, floating.
      k: ``1 ≤ k ≤ min(N_i, N_t)``.
      text_to_image: ``(N_t,)`` integer, ``g(t)``, every image used at least once
        (e.g. COCO's five captions per image); ``None`` means ``N_i = N_t`` and
        text ``b`` describes image ``b``.

    Returns:
      :class:`Recall` of two 0-dim float tensors in ``[0, 1]``.
    """
    fn = "recall_at_k"
    for name, e in (("image_embeds", image_embeds), ("text_embeds", text_embeds)):
        if e.ndim != 2 or not e.is_floating_point() or e.shape[0] == 0:
            raise ValueError(
                f"{fn}: {name} must be floating (N, E) with N >= 1, got {tuple(e.shape)} {e.dtype}."
            )
    n_i, n_t = image_embeds.shape[0], text_embeds.shape[0]
    if image_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(
            f"{fn}: embedding widths differ: image {image_embeds.shape[1]}, text "
            f"{text_embeds.shape[1]}; project both into the shared space first."
        )
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(n_i, n_t):
        raise ValueError(
            f"{fn}: k must be an integer in [1, min(N_i, N_t)] = [1, {min(n_i, n_t)}], got k={k!r}."
        )
    if text_to_image is None:
        if n_i != n_t:
            raise ValueError(
                f"{fn}: {n_i} images and {n_t} texts; without text_to_image row b of each must be "
                "a pair — pass text_to_image (N_t,) giving each text's image index."
            )
        g = torch.arange(n_t, device=image_embeds.device)
    else:
        if text_to_image.shape != (n_t,) or text_to_image.dtype.is_floating_point:
            raise ValueError(
                f"{fn}: text_to_image must be integer of shape ({n_t},), got "
                f"{tuple(text_to_image.shape)} {text_to_image.dtype}."
            )
        g = text_to_image.long().to(image_embeds.device)
        if g.min() < 0 or g.max() >= n_i or (torch.bincount(g, minlength=n_i) == 0).any():
            raise ValueError(
                f"{fn}: text_to_image must take values in [0, {n_i - 1}] and name every image "
                f"at least once, got values in [{int(g.min())}, {int(g.max())}]."
            )
    sim = F.normalize(image_embeds.float(), dim=-1) @ F.normalize(text_embeds.float(), dim=-1).mT
    positive = sim[g, torch.arange(n_t, device=sim.device)]  # (N_t,) S_{g(t), t}
    ir = ((sim > positive[None, :]).sum(dim=0) < k).float().mean()
    is_pos = g[None, :] == torch.arange(n_i, device=sim.device)[:, None]  # (N_i, N_t)
    best = sim.masked_fill(~is_pos, float("-inf")).amax(dim=1)  # (N_i,)
    tr = ((sim > best[:, None]).sum(dim=1) < k).float().mean()
    return Recall(image_retrieval=ir, text_retrieval=tr)
