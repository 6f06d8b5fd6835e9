"""BridgeTower (Xu et al., AAAI 2023) — a METER-style dual-stream backbone with cross-attention.

A RoBERTa-like text encoder and a CLIP-ViT vision encoder feed two cross-modal
stacks (``cross_modal_text_layers`` and ``cross_modal_image_layers``), each
layer with a self-attention and a cross-attention. Targets and who reads what:

* text encoder, ``…encoder.layer.N.attention.self.{query,key,value}`` — one input, one group;
* vision encoder, ``…resblocks.N.attn.in_proj`` — q/k/v *fused* in one
  ``nn.MultiheadAttention`` packed projection ``(3d, d)``: one target, its own group;
* cross-modal self-attention ``…layers.N.attention.self.{query,key,value}`` — one group;
* cross-modal cross-attention ``…layers.N.crossattention.self.*``: ``query`` reads
  the stream's own states, ``key``/``value`` the other stream's, so ``key`` and
  ``value`` share a group and ``query`` stands alone (:data:`STRIP`).

Tasks: ``"itm"`` — ``BridgeTowerForImageAndTextRetrieval`` (``itm_logits``
``(B, 2)``); ``"contrastive"`` — ``BridgeTowerForContrastiveLearning``
(``text_embeds``, ``image_embeds``, ``cross_embeds`` ``(B, D)``, L2-normalised,
and ``logit_scale`` ``()``). Heads: the HF head and, by default, the two
cross-modal poolers (pre-trained by ITM, feeding only the head; ``pooler=False``
freezes them).
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs
import torch
from torch import Tensor
from transformers import (
    BridgeTowerConfig,
    BridgeTowerForContrastiveLearning,
    BridgeTowerForImageAndTextRetrieval,
)

from moil.approx import TRANSFORM_KEYS, Sharing
from moil.backbones.base import Backbone, auto_sharing
from moil.backbones.calls import Logits, SelectInputs
from moil.backbones.family import family_patterns, seeded, task_of
from moil.backbones.targets import Patterns, select_params, select_targets

__all__ = ["build", "from_pretrained", "tiny", "QKV", "MLP", "STRIP", "SHARING", "TASKS"]

_B = r"bridgetower\."
_TEXT = _B + r"text_model\.encoder\.layer\.\d+"
_CROSS = _B + r"cross_modal_(?:text|image)_layers\.\d+"
_VISION = _B + r"vision_model\.visual\.transformer\.resblocks\.\d+"
#: q/k/v of the text encoder, both cross-modal stacks (self- and cross-attention),
#: and the fused q/k/v ``in_proj`` of the vision encoder.
QKV = (
    rf"{_TEXT}\.attention\.self\.(?:query|key|value)"
    rf"|{_CROSS}\.(?:attention|crossattention)\.self\.(?:query|key|value)"
    rf"|{_VISION}\.attn\.in_proj"
)
#: The MLP linears of every text, cross-modal and vision layer.
MLP = (
    rf"(?:{_TEXT}|{_CROSS})\.(?:intermediate|output)\.dense"
    rf"|{_VISION}\.mlp\.(?:c_fc|c_proj)"
)
#: Group name = target minus ``.key``/``.value``, or minus ``.query`` except in a
#: cross-attention, whose query reads another input than its key and value.
STRIP = r"(?<!crossattention\.self)\.query$|\.(?:key|value)$"
SHARING = Sharing(TRANSFORM_KEYS, strip=STRIP)
POOLERS = ("bridgetower.cross_modal_image_pooler", "bridgetower.cross_modal_text_pooler")
_KEYS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values", "pixel_mask")


def contrastive_outputs(out: Any, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``text_embeds``, ``image_embeds``, ``cross_embeds`` ``(B, D)`` (L2-normalised)."""
    return {"text_embeds": out.text_embeds, "image_embeds": out.image_embeds, "cross_embeds": out.cross_embeds}


@attrs.frozen
class _Task:
    cls: type
    heads: tuple[str, ...]
    outputs: Any
    inputs: SelectInputs
    passthrough: tuple[tuple[str, str], ...] = ()


_REQUIRED = ("input_ids", "pixel_values")
TASKS = {
    "itm": _Task(
        BridgeTowerForImageAndTextRetrieval, ("itm_score",), Logits("itm_logits"),
        SelectInputs(_KEYS, _REQUIRED, (("return_dict", True),)),
    ),
    "contrastive": _Task(
        BridgeTowerForContrastiveLearning,
        ("itc_text_head", "itc_image_head", "itc_cross_modal_head", "logit_scale"),
        contrastive_outputs,
        SelectInputs(_KEYS, _REQUIRED, (("return_dict", True), ("output_hidden_states", True))),
        (("logit_scale", "logit_scale"),),
    ),
}


def build(
    model: torch.nn.Module,
    targets: Patterns | None = None,
    *,
    mlp: bool = False,
    pooler: bool = True,
    exclude: Patterns = (),
) -> Backbone:
    """A :class:`Backbone` for a BridgeTower task model.

    Args:
      model: ``BridgeTowerForImageAndTextRetrieval`` or ``BridgeTowerForContrastiveLearning``.
      targets: patterns; default :data:`QKV` (3 per text layer, 6 per cross-modal
        layer of each stack, 1 fused per vision layer).
      mlp: also adapt the MLP linears (default targets only).
      pooler: train the cross-modal poolers with the head (default) or freeze them.
      exclude: patterns of layers to leave out.
    """
    task = task_of(model, {t.cls: t for t in TASKS.values()}, "bridgetower")
    chosen = select_targets(model, family_patterns(QKV, MLP, targets, mlp), exclude)
    heads = select_params(model, task.heads + (POOLERS if pooler else ()))
    return Backbone(
        model, chosen, heads, auto_sharing(chosen, SHARING), task.inputs, task.outputs,
        dict(task.passthrough),
    )


def from_pretrained(
    path_or_id: str,
    task: str = "itm",
    *,
    targets: Patterns | None = None,
    mlp: bool = False,
    pooler: bool = True,
    exclude: Patterns = (),
    **kwargs: Any,
) -> Backbone:
    """Load a BridgeTower checkpoint (local folder or hub id you have) as a :class:`Backbone`."""
    model = _spec(task).cls.from_pretrained(path_or_id, **kwargs).eval()
    return build(model, targets, mlp=mlp, pooler=pooler, exclude=exclude)


def tiny(task: str = "itm", *, seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A small random-init BridgeTower task model in eval mode: hidden 64 throughout
    (the vision ``nn.MultiheadAttention`` has ``hidden // 64`` heads, so 64 is the
    least; transformers' BridgeTower builds the cross-modal layers from the text
    config and adds text-width embeddings to vision states, so the three widths
    must agree), 2 text / vision / cross-modal layers, vocabulary 99, 32×32
    images, 16×16 patches. ``overrides`` update the top-level config."""
    spec = _spec(task)
    text = dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        vocab_size=99, max_position_embeddings=40, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    vision = dict(hidden_size=64, num_hidden_layers=2, image_size=32, patch_size=16)
    config = dict(
        text_config=text, vision_config=vision, hidden_size=64, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=37,
    )
    if task == "contrastive":  # not BridgeTowerConfig fields in transformers 5.24: set them
        config.update(contrastive_hidden_size=16, logit_scale_init_value=2.6592)
    config.update(overrides)
    return seeded(spec.cls, BridgeTowerConfig(**config), seed)


def _spec(task: str) -> _Task:
    if task not in TASKS:
        raise ValueError(f"bridgetower: task must be one of {sorted(TASKS)}, got task={task!r}.")
    return TASKS[task]
