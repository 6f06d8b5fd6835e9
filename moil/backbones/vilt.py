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

import attrs
import torch
from torch import Tensor
from transformers import (
    ViltConfig,
    ViltForImageAndTextRetrieval,
    ViltForImagesAndTextClassification,
    ViltForQuestionAnswering,
)

from moil.approx import TRANSFORM_KEYS, Sharing
from moil.backbones.base import Backbone, auto_sharing
from moil.backbones.calls import Logits, SelectInputs, logits_of
from moil.backbones.family import family_patterns, seeded, task_of
from moil.backbones.targets import Patterns, select_params, select_targets

__all__ = ["build", "from_pretrained", "tiny", "itm_logits", "QKV", "MLP", "TASKS"]

#: The attention q/k/v of every ViLT layer.
QKV = r"vilt\.encoder\.layer\.\d+\.attention\.attention\.(query|key|value)"
#: The two MLP linears of every layer (not ``attention.output.dense``).
MLP = r"vilt\.encoder\.layer\.\d+\.(intermediate|output)\.dense"
POOLER = ("vilt.pooler",)
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


@attrs.frozen
class _Task:
    cls: type
    heads: tuple[str, ...]
    outputs: Any


TASKS = {
    "itm": _Task(ViltForImageAndTextRetrieval, ("rank_output",), itm_logits),
    "vqa": _Task(ViltForQuestionAnswering, ("classifier",), Logits("vqa_logits")),
    "nlvr2": _Task(ViltForImagesAndTextClassification, ("classifier",), Logits("pair_logits")),
}


def build(
    model: torch.nn.Module,
    targets: Patterns | None = None,
    *,
    mlp: bool = False,
    pooler: bool = True,
    exclude: Patterns = (),
) -> Backbone:
    """A :class:`Backbone` for a ViLT task model (``itm``, ``vqa`` or ``nlvr2``).

    Args:
      model: a ``ViltForImageAndTextRetrieval``, ``ViltForQuestionAnswering`` or
        ``ViltForImagesAndTextClassification``; only read.
      targets: patterns (see :func:`~moil.backbones.select_targets`); default the
        q/k/v of every layer (``3 × num_hidden_layers`` targets).
      mlp: also adapt each layer's two MLP linears (default targets only).
      pooler: train ``vilt.pooler`` with the head (default) or keep it frozen.
      exclude: patterns of layers to leave out.
    """
    task = task_of(model, {t.cls: t for t in TASKS.values()}, "vilt")
    chosen = select_targets(model, family_patterns(QKV, MLP, targets, mlp), exclude)
    heads = select_params(model, task.heads + (POOLER if pooler else ()))
    sharing = auto_sharing(chosen, Sharing(TRANSFORM_KEYS))
    return Backbone(model, chosen, heads, sharing, INPUTS, task.outputs)


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
    """Load a ViLT checkpoint (a local folder or a hub id you have) as a task :class:`Backbone`.

    ``kwargs`` go to ``from_pretrained`` — e.g. ``num_labels=3129`` for VQA, or
    ``num_images=2, modality_type_vocab_size=3, ignore_mismatched_sizes=True`` to
    start NLVR2 from a pre-trained (MLM/ITM) checkpoint. Heads absent from the
    checkpoint are newly initialised by transformers (it logs which).
    """
    spec = _spec(task)
    model = spec.cls.from_pretrained(path_or_id, **kwargs).eval()
    return build(model, targets, mlp=mlp, pooler=pooler, exclude=exclude)


def tiny(task: str = "itm", *, seed: int = 0, num_answers: int = 5, **overrides: Any) -> torch.nn.Module:
    """A small random-init ViLT task model in eval mode (hidden 32, 2 layers, 32×32 images,
    16×16 patches, vocabulary 99, text up to 40 tokens); ``overrides`` update the config."""
    spec = _spec(task)
    config = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        image_size=32, patch_size=16, vocab_size=99, max_position_embeddings=40,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    if task == "vqa":
        config["num_labels"] = num_answers
    if task == "nlvr2":
        config.update(num_images=2, modality_type_vocab_size=3, num_labels=2)
    config.update(overrides)
    return seeded(spec.cls, ViltConfig(**config), seed)


def _spec(task: str) -> _Task:
    if task not in TASKS:
        raise ValueError(f"vilt: task must be one of {sorted(TASKS)}, got task={task!r}.")
    return TASKS[task]
