"""A one-layer BERT whose adapted layers are awkward: q/k/v (16, 16) and the feed-forward's
non-square (37, 16) and (16, 37) — the export tests' model for unseen shapes and dtypes."""

from __future__ import annotations

import functools

import torch
import transformers

LAYER = "bert.encoder.layer.0"
QKV = tuple(f"{LAYER}.attention.self.{n}" for n in ("query", "key", "value"))
DENSE = (f"{LAYER}.intermediate.dense", f"{LAYER}.output.dense")  # (37, 16) and (16, 37)
#: Output tolerance per dtype, relative to ``1 + max |output|``.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 6e-2}


@functools.cache
def awkward_bert(dtype: torch.dtype, vocab_size: int = 50) -> transformers.BertForSequenceClassification:
    """The model in ``dtype``, seed 0, in eval mode (cached: do not modify it in place)."""
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=37, vocab_size=vocab_size, num_labels=3,
                                     initializer_range=0.2)
    return transformers.BertForSequenceClassification(config).eval().to(dtype)
