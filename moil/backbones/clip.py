"""CLIP (Radford et al., 2021) — a dual encoder trained contrastively.

Two towers, ``text_model`` and ``vision_model``, each a stack of layers whose
``self_attn.{q_proj,k_proj,v_proj}`` read one input (one sharing group per
layer). ``CLIPModel`` gives moil's contrastive outputs: ``image_embeds``
``(B, D)`` and ``text_embeds`` ``(B', D)``, L2-normalised, and ``logit_scale``
``()`` — the *log* of the temperature's inverse, so logits are
``exp(logit_scale) · image_embeds @ text_embeds.T``. The default head is
``logit_scale`` alone (``projections=True`` also trains the two projections).

Zero-shot classification: :func:`encode_text` on class prompts (optionally
several templates per class, averaged), :func:`encode_image`, then
:func:`zero_shot_logits`.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor
from transformers import CLIPConfig, CLIPModel

from moil.backbones.base import Backbone
from moil.backbones.calls import SelectInputs
from moil.backbones.family import Family, Task

__all__ = [
    "FAMILY",
    "build",
    "from_pretrained",
    "tiny",
    "encode_text",
    "encode_image",
    "zero_shot_logits",
    "QKV",
    "MLP",
]

QKV = r"(?:text|vision)_model\.encoder\.layers\.\d+\.self_attn\.(?:q_proj|k_proj|v_proj)"
MLP = r"(?:text|vision)_model\.encoder\.layers\.\d+\.mlp\.(?:fc1|fc2)"
INPUTS = SelectInputs(
    ("input_ids", "attention_mask", "position_ids", "pixel_values"),
    required=("input_ids", "pixel_values"),
    fixed=(("return_dict", True),),
)


def contrastive_outputs(out: Any, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``image_embeds`` ``(B, D)`` and ``text_embeds`` ``(B', D)``, L2-normalised."""
    return {"image_embeds": out.image_embeds, "text_embeds": out.text_embeds}


_TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
#: CLIP as data: one task, ``CLIPModel``'s contrastive outputs; ``projections=True``
#: also trains the two projections. Tiny: both towers hidden 32, 2 layers, 2 heads;
#: vocabulary 99, text up to 16 tokens (pooled at the largest token id,
#: ``eos_token_id=2``); 32×32 images, 16×16 patches; embeddings of width 16
#: (``projection_dim``).
FAMILY = Family(
    "clip", CLIPConfig, QKV, MLP,
    {"contrastive": Task(
        CLIPModel, contrastive_outputs, INPUTS, ("logit_scale",),
        {"projections": ("visual_projection", "text_projection")},
        passthrough=(("logit_scale", "logit_scale"),),
    )},
    tiny_config=dict(
        text_config=dict(
            _TOWER, vocab_size=99, max_position_embeddings=16, bos_token_id=0, eos_token_id=2,
            pad_token_id=1,
        ),
        vision_config=dict(_TOWER, image_size=32, patch_size=16),
        projection_dim=16,
    ),
    options={"projections": False},
)

#: ``build(model, targets=None, *, mlp=False, exclude=(), projections=False)``: a
#: :class:`~moil.backbones.Backbone` for a ``CLIPModel``; default targets the q/k/v of
#: both towers (``3 × layers`` per tower).
build = FAMILY.build
#: ``from_pretrained(path_or_id, ...)``: load a CLIP checkpoint.
from_pretrained = FAMILY.from_pretrained
#: ``tiny(*, seed=0, projection_dim=16, **overrides)``: a small random-init ``CLIPModel``.
tiny = FAMILY.tiny


# -- zero-shot classification ----------------------------------------------------
def _tower(
    backbone: Backbone, params: Mapping[str, Tensor], prefix: str
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    # The tower's own tensors (prefix stripped) and the full resolved dict.
    full = backbone.resolve(params)
    return {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}, full


def _normalise(x: Tensor) -> Tensor:
    return x / x.pow(2).sum(dim=-1, keepdim=True).sqrt()


def encode_text(
    backbone: Backbone,
    params: Mapping[str, Tensor],
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
) -> Tensor:
    """L2-normalised text embeddings with ``params`` applied (text tower only).

    Args:
      input_ids: ``(C, L)``, or ``(C, K, L)`` for ``K`` prompt templates per class,
        whose embeddings are averaged and re-normalised (CLIP's prompt ensembling).
      attention_mask: same shape as ``input_ids``, or ``None``.

    Returns:
      ``(C, D)``.
    """
    model = backbone.model
    shape = input_ids.shape
    flat_ids = input_ids.reshape(-1, shape[-1])
    flat_mask = None if attention_mask is None else attention_mask.reshape(-1, shape[-1])
    sub, full = _tower(backbone, params, "text_model.")
    out = torch.func.functional_call(
        model.text_model, sub, args=(), kwargs=dict(input_ids=flat_ids, attention_mask=flat_mask)
    )
    emb = _normalise(out.pooler_output @ full["text_projection.weight"].T)
    if len(shape) == 3:
        emb = _normalise(emb.reshape(shape[0], shape[1], -1).mean(dim=1))
    return emb


def encode_image(backbone: Backbone, params: Mapping[str, Tensor], pixel_values: Tensor) -> Tensor:
    """L2-normalised image embeddings ``(B, D)`` of ``pixel_values`` ``(B, 3, H, W)``."""
    sub, full = _tower(backbone, params, "vision_model.")
    out = torch.func.functional_call(
        backbone.model.vision_model, sub, args=(), kwargs=dict(pixel_values=pixel_values)
    )
    return _normalise(out.pooler_output @ full["visual_projection.weight"].T)


def zero_shot_logits(image_embeds: Tensor, class_embeds: Tensor, logit_scale: Tensor) -> Tensor:
    """``exp(logit_scale) · image_embeds @ class_embeds.T`` — ``(B, D), (C, D), () → (B, C)``.

    Example:
      >>> bb = build(tiny())  # doctest: +SKIP
      >>> cls = encode_text(bb, {}, class_ids)  # (C, D)
      >>> logits = zero_shot_logits(encode_image(bb, {}, images), cls, bb.model.logit_scale)
    """
    return logit_scale.exp() * image_embeds @ class_embeds.T
