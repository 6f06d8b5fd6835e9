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

from torch import Tensor
from transformers import (
    BridgeTowerConfig,
    BridgeTowerForContrastiveLearning,
    BridgeTowerForImageAndTextRetrieval,
)

from moil.approx import TRANSFORM_KEYS, Sharing
from moil.backbones.calls import Logits, SelectInputs
from moil.backbones.family import Family, Task

__all__ = ["FAMILY", "build", "from_pretrained", "tiny", "QKV", "MLP", "STRIP", "SHARING", "TASKS"]

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
_POOLERS = {"pooler": ("bridgetower.cross_modal_image_pooler", "bridgetower.cross_modal_text_pooler")}
_KEYS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values", "pixel_mask")




def contrastive_outputs(out: Any, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``text_embeds``, ``image_embeds``, ``cross_embeds`` ``(B, D)`` (L2-normalised)."""
    return {k: getattr(out, k) for k in ("text_embeds", "image_embeds", "cross_embeds")}


_REQUIRED = ("input_ids", "pixel_values")
TASKS = {
    "itm": Task(
        BridgeTowerForImageAndTextRetrieval, Logits("itm_logits"),
        SelectInputs(_KEYS, _REQUIRED, (("return_dict", True),)), ("itm_score",), _POOLERS,
    ),
    "contrastive": Task(
        BridgeTowerForContrastiveLearning, contrastive_outputs,
        SelectInputs(_KEYS, _REQUIRED, (("return_dict", True), ("output_hidden_states", True))),
        ("itc_text_head", "itc_image_head", "itc_cross_modal_head", "logit_scale"), _POOLERS,
        passthrough=(("logit_scale", "logit_scale"),),
        # not BridgeTowerConfig fields in transformers 5.24: set them
        tiny={"contrastive_hidden_size": 16, "logit_scale_init_value": 2.6592},
    ),
}

_TEXT_TINY = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
    vocab_size=99, max_position_embeddings=40, hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
#: BridgeTower as data. Default targets :data:`QKV`: 3 per text layer, 6 per cross-modal
#: layer of each stack, 1 fused per vision layer. Tiny: hidden 64 throughout (the vision
#: ``nn.MultiheadAttention`` has ``hidden // 64`` heads, so 64 is the least; transformers'
#: BridgeTower builds the cross-modal layers from the text config and adds text-width
#: embeddings to vision states, so the three widths must agree), 2 text / vision /
#: cross-modal layers, vocabulary 99, 32×32 images, 16×16 patches; ``overrides`` of
#: :meth:`~moil.backbones.family.Family.tiny` update the top-level config.
FAMILY = Family(
    "bridgetower", BridgeTowerConfig, QKV, MLP, TASKS,
    tiny_config=dict(
        text_config=_TEXT_TINY,
        vision_config=dict(hidden_size=64, num_hidden_layers=2, image_size=32, patch_size=16),
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
    ),
    sharing=SHARING,
)

#: ``build(model, targets=None, *, task=None, mlp=False, exclude=(), pooler=True)``.
build = FAMILY.build
#: ``from_pretrained(path_or_id, task="itm", ...)``: load a BridgeTower checkpoint.
from_pretrained = FAMILY.from_pretrained
#: ``tiny(task="itm", *, seed=0, **overrides)``: a small random-init model.
tiny = FAMILY.tiny
