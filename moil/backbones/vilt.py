"""ViLT (Kim et al., ICML 2021) — MoIL's reference backbone.

One transformer reads text tokens and image patches together; each of its
layers has one self-attention whose ``query``/``key``/``value`` read the same
input, so the transform is shared per layer (``Sharing(TRANSFORM_KEYS)``).

Tasks (transformers classes): ``"itm"`` — ``ViltForImageAndTextRetrieval``
(a single score ``s`` ``(B, 1)`` becomes ``itm_logits = [0, s]`` ``(B, 2)``, so
cross-entropy on it equals binary cross-entropy on ``s``); ``"vqa"`` —
``ViltForQuestionAnswering`` (``vqa_logits`` ``(B, A)``); ``"nlvr2"`` —
``ViltForImagesAndTextClassification`` with ``num_images=2`` (``pair_logits``
``(B, 2)``, ``pixel_values`` ``(B, 2, 3, H, W)``).

Heads: the HF head (``rank_output`` / ``classifier``) and, by default, the
pooler ``vilt.pooler`` (dense + tanh on the [CLS] token). The pooler was
trained by ViLT's image-text-matching pre-training objective and its output
feeds only the task head, so it is treated as part of the head; pass
``pooler=False`` to keep it frozen.

Starting from a pre-training checkpoint (e.g. ``dandelin/vilt-b32-mlm``), the
task head is new: transformers initialises it at random (ViLT's own code seeds
``rank_output`` from its ITM head, which ``ViltForMaskedLM`` checkpoints lack).

Note: ViLT's patch embedding shuffles image patches with ``torch.multinomial``
on the global RNG; outputs are invariant to the order up to rounding (seed the
RNG for bit-identical runs) and the forward cannot run under ``torch.func.vmap``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor
from transformers import (
    ViltConfig,
    ViltForImageAndTextRetrieval,
    ViltForImagesAndTextClassification,
    ViltForQuestionAnswering,
)

from moil.backbones.calls import Logits, SelectInputs, logits_of
from moil.backbones.family import Family, Task

__all__ = ["FAMILY", "build", "from_pretrained", "tiny", "itm_logits", "QKV", "MLP", "TASKS"]

#: The attention q/k/v of every ViLT layer.
QKV = r"vilt\.encoder\.layer\.\d+\.attention\.attention\.(query|key|value)"
#: The two MLP linears of every layer (not ``attention.output.dense``).
MLP = r"vilt\.encoder\.layer\.\d+\.(intermediate|output)\.dense"
INPUTS = SelectInputs(
    ("input_ids", "attention_mask", "token_type_ids", "pixel_values", "pixel_mask"),
    required=("input_ids", "pixel_values"),
    fixed=(("return_dict", True),),
)


def itm_logits(out: Any, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``{"itm_logits": [0, s]}`` ``(B, 2)`` from a single matching score ``s`` ``(B, 1)``.

    ``softmax([0, s])[1] = σ(s)``: cross-entropy with label 1/0 is BCE on ``s``.
    """
    s = logits_of(out)
    return {"itm_logits": torch.cat([torch.zeros_like(s), s], dim=-1)}


_POOLER = {"pooler": ("vilt.pooler",)}
TASKS = {
    "itm": Task(ViltForImageAndTextRetrieval, itm_logits, INPUTS, ("rank_output",), _POOLER),
    "vqa": Task(ViltForQuestionAnswering, Logits("vqa_logits"), INPUTS, ("classifier",), _POOLER,
                answers=True),
    "nlvr2": Task(ViltForImagesAndTextClassification, Logits("pair_logits"), INPUTS, ("classifier",),
                  _POOLER, tiny={"num_images": 2, "modality_type_vocab_size": 3, "num_labels": 2}),
}

#: ViLT as data. Tiny: hidden 32, 2 layers, 32×32 images, 16×16 patches,
#: vocabulary 99, text up to 40 tokens.
FAMILY = Family(
    "vilt", ViltConfig, QKV, MLP, TASKS,
    tiny_config=dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        image_size=32, patch_size=16, vocab_size=99, max_position_embeddings=40,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    ),
)

#: ``build(model, targets=None, *, task=None, mlp=False, exclude=(), pooler=True)``:
#: a :class:`~moil.backbones.Backbone` for a ViLT task model (see :meth:`Family.build`).
build = FAMILY.build
#: ``from_pretrained(path_or_id, task="itm", ...)``: e.g. ``num_labels=3129`` for VQA, or
#: ``num_images=2, modality_type_vocab_size=3, ignore_mismatched_sizes=True`` to start
#: NLVR2 from a pre-trained (MLM/ITM) checkpoint.
from_pretrained = FAMILY.from_pretrained
#: ``tiny(task="itm", *, seed=0, num_answers=5, **overrides)``: a small random-init model.
tiny = FAMILY.tiny
