"""VisualBERT (Li et al., 2019) — a two-stage backbone: BERT over text tokens and
precomputed visual features.

Visual tokens are features from a frozen detector or CNN, ``visual_embeds``
``(B, T, Dv)`` (region features, or grid features such as an EfficientNet's
``extract_features`` flattened to ``T = h·w`` tokens), projected to the hidden
width by ``visual_bert.embeddings.visual_projection``. One BERT encoder reads
both; each layer's ``query``/``key``/``value`` read one input and share a group.

Tasks: ``"itm"`` — ``VisualBertForVisualReasoning`` with ``num_labels=2``
(``itm_logits`` ``(B, 2)``, from the pooled [CLS]); ``"nlvr2"`` — the same class
read as ``pair_logits``; ``"vqa"`` — ``VisualBertForQuestionAnswering``
(``vqa_logits`` ``(B, A)``, from the last text token: it needs ``attention_mask``).
Heads: ``cls`` and, for ``itm``/``nlvr2``, the pooler ``visual_bert.pooler``
(``pooler=False`` freezes it; the VQA head does not read the pooler).

:func:`from_bert` makes a VisualBERT from any BERT checkpoint (e.g.
all-MiniLM-L6-v2): config and text weights copied, visual projection and head new.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import (
    AutoModel,
    VisualBertConfig,
    VisualBertForQuestionAnswering,
    VisualBertForVisualReasoning,
)

from moil.backbones.calls import Logits, SelectInputs
from moil.backbones.family import Family, Task, seeded

__all__ = ["FAMILY", "build", "from_pretrained", "from_bert", "tiny", "QKV", "MLP", "TASKS"]

QKV = r"visual_bert\.encoder\.layer\.\d+\.attention\.self\.(query|key|value)"
MLP = r"visual_bert\.encoder\.layer\.\d+\.(intermediate|output)\.dense"
_KEYS = (
    "input_ids", "attention_mask", "token_type_ids",
    "visual_embeds", "visual_attention_mask", "visual_token_type_ids",
)
#: BERT config fields a VisualBERT built by :func:`from_bert` copies.
BERT_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
    "max_position_embeddings", "type_vocab_size", "initializer_range", "layer_norm_eps",
    "pad_token_id",
)

_RET = (("return_dict", True),)
_PAIR = SelectInputs(_KEYS, ("input_ids", "visual_embeds"), _RET)
_POOLER = {"pooler": ("visual_bert.pooler",)}  # the VQA head does not read the pooler
TASKS = {
    "itm": Task(VisualBertForVisualReasoning, Logits("itm_logits"), _PAIR, ("cls",), _POOLER,
                tiny={"num_labels": 2}),
    "nlvr2": Task(VisualBertForVisualReasoning, Logits("pair_logits"), _PAIR, ("cls",), _POOLER,
                  tiny={"num_labels": 2}),
    "vqa": Task(VisualBertForQuestionAnswering, Logits("vqa_logits"),
                SelectInputs(_KEYS, ("input_ids", "attention_mask", "visual_embeds"), _RET), ("cls",),
                answers=True),
}

#: VisualBERT as data. Tiny: hidden 32, 2 layers, vocabulary 99, ``visual_embeds`` width 16.
FAMILY = Family(
    "visualbert", VisualBertConfig, QKV, MLP, TASKS,
    tiny_config=dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        vocab_size=99, max_position_embeddings=40, visual_embedding_dim=16,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    ),
)

#: ``build(model, targets=None, *, task=None, mlp=False, exclude=(), trainable=(), pooler=True)``:
#: ``task`` is ``"itm"`` (default for ``VisualBertForVisualReasoning``) or ``"nlvr2"`` — which
#: key its 2-way logits get — or ``"vqa"``; ``trainable`` e.g. the new
#: ``visual_bert.embeddings.visual_projection`` that :func:`from_bert` reports.
build = FAMILY.build
#: ``from_pretrained(path_or_id, task="itm", ...)``: load a VisualBERT checkpoint.
from_pretrained = FAMILY.from_pretrained
#: ``tiny(task="itm", *, seed=0, num_answers=5, visual_embedding_dim=16, **overrides)``.
tiny = FAMILY.tiny


def from_bert(
    bert: torch.nn.Module | str | os.PathLike,
    visual_embedding_dim: int,
    task: str = "itm",
    num_answers: int | None = None,
    *,
    seed: int = 0,
    **config: Any,
) -> tuple[torch.nn.Module, list[str]]:
    """A VisualBERT task model whose text side is a BERT checkpoint.

    The config copies :data:`BERT_FIELDS` from the BERT's (e.g. all-MiniLM-L6-v2:
    hidden 384, 6 layers, 12 heads); the word/position/token-type embeddings,
    embedding LayerNorm, every encoder layer and (if the BERT has one) the pooler
    are copied. As in VisualBERT's ``special_visual_initialize``, the visual
    token-type and position embeddings start as copies of BERT's token-type and
    position embeddings. New (random, seeded by ``seed``): the visual projection
    ``(hidden, visual_embedding_dim)`` and the head.

    Args:
      bert: a ``BertModel`` (or a ``BertFor…`` model with a ``bert.`` prefix), or a
        path / hub id loaded with ``AutoModel.from_pretrained``.
      visual_embedding_dim: ``Dv``, the width of ``visual_embeds`` ``(B, T, Dv)``.
      task: ``"itm"``/``"nlvr2"`` (2 labels) or ``"vqa"`` (``num_answers`` labels).
      num_answers: the answer vocabulary size ``A`` for VQA.
      config: further ``VisualBertConfig`` fields.

    Returns:
      ``(model, new)``: the model in eval mode and the names of its parameters
      that were newly initialised.

    Raises:
      TypeError: ``bert`` is not a BERT model. ValueError: bad task/num_answers,
        or a BERT tensor with no VisualBERT counterpart of the same shape.
    """
    spec = FAMILY.task(task)
    if spec.answers and not num_answers:
        raise ValueError("from_bert: task='vqa' needs num_answers, e.g. num_answers=3129.")
    if isinstance(bert, (str, os.PathLike)):
        bert = AutoModel.from_pretrained(bert)
    if getattr(bert.config, "model_type", None) != "bert":
        raise TypeError(
            f"from_bert: expected a BERT model (config.model_type 'bert'), got "
            f"{type(bert).__name__} with model_type {getattr(bert.config, 'model_type', None)!r}."
        )
    fields = {k: getattr(bert.config, k) for k in BERT_FIELDS}
    fields.update(visual_embedding_dim=visual_embedding_dim, num_labels=num_answers or 2, **config)
    model = seeded(spec.cls, VisualBertConfig(**fields), seed)

    source = {k.removeprefix("bert."): v for k, v in bert.state_dict().items()}
    own = model.visual_bert.state_dict()
    loaded = {k: source[k] for k in own if k in source}
    wrong = {k: (tuple(source[k].shape), tuple(own[k].shape)) for k in loaded if source[k].shape != own[k].shape}
    if wrong:
        raise ValueError(f"from_bert: BERT tensors of unexpected shape (BERT, VisualBERT): {wrong}.")
    unused = [k for k in source if k not in loaded and k.startswith(("embeddings.", "encoder."))]
    unused = [k for k in unused if not k.endswith(("position_ids", "token_type_ids"))]
    if unused:
        raise ValueError(f"from_bert: BERT tensors with no VisualBERT counterpart: {unused[:5]}.")
    loaded["embeddings.visual_token_type_embeddings.weight"] = source["embeddings.token_type_embeddings.weight"]
    loaded["embeddings.visual_position_embeddings.weight"] = source["embeddings.position_embeddings.weight"]
    model.visual_bert.load_state_dict(loaded, strict=False)
    copied = {f"visual_bert.{k}" for k in loaded}
    new = [n for n, _ in model.named_parameters() if n not in copied]
    return model, new
