"""A VLMO-like model (Bao et al., 2022) as a small transformers ``PreTrainedModel``: each block has one
self-attention shared by both modalities and a feed-forward *expert* per modality (text tokens go
through ``text_ffn``, image patches through ``image_ffn``). No transformers class has it; moil adapts
it through ``moil.backbones.from_model`` with patterns. Its ``save_pretrained`` folder loads with
``VLMOForITM.from_pretrained`` — plain transformers plus this file."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class VLMOConfig(PretrainedConfig):
    model_type = "vlmo-tiny"

    def __init__(self, vocab_size=64, hidden_size=32, heads=2, layers=2, ffn=48, patch=8, image_size=16,
                 **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.hidden_size, self.heads, self.layers = vocab_size, hidden_size, heads, layers
        self.ffn, self.patch, self.image_size = ffn, patch, image_size


class MoMEBlock(nn.Module):
    """Pre-norm block: ``x + Attn(LN x)`` with shared ``query``/``key``/``value``/``out``, then
    ``x + FFN_m(LN x)`` where ``m`` is each token's modality (0 text, 1 image)."""

    def __init__(self, c: VLMOConfig):
        super().__init__()
        d = c.hidden_size
        self.heads = c.heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.query, self.key, self.value, self.out = (nn.Linear(d, d) for _ in range(4))
        self.text_ffn = nn.Sequential(nn.Linear(d, c.ffn), nn.GELU(), nn.Linear(c.ffn, d))
        self.image_ffn = nn.Sequential(nn.Linear(d, c.ffn), nn.GELU(), nn.Linear(c.ffn, d))

    def forward(self, x: torch.Tensor, is_image: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.norm1(x)
        q, k, v = (f(h).view(b, t, self.heads, d // self.heads).transpose(1, 2) for f in (self.query, self.key, self.value))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        x = x + self.out(a)
        h = self.norm2(x)
        return x + torch.where(is_image[..., None], self.image_ffn(h), self.text_ffn(h))


class VLMOForITM(PreTrainedModel):
    """Text tokens ``input_ids`` ``(B, L)`` and ``pixel_values`` ``(B, 3, H, W)`` → ``logits`` ``(B, 2)``."""

    config_class = VLMOConfig

    def __init__(self, config: VLMOConfig):
        super().__init__(config)
        d = config.hidden_size
        self.embed = nn.Embedding(config.vocab_size, d)
        self.patches = nn.Conv2d(3, d, config.patch, stride=config.patch)
        self.modality = nn.Embedding(2, d)
        self.blocks = nn.ModuleList(MoMEBlock(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(d)
        self.itm_head = nn.Linear(d, 2)
        self.post_init()

    def forward(self, input_ids, pixel_values, return_dict=True):
        text = self.embed(input_ids)
        image = self.patches(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat([text, image], dim=1)
        is_image = torch.cat([torch.zeros(text.shape[:2], dtype=torch.bool, device=x.device),
                              torch.ones(image.shape[:2], dtype=torch.bool, device=x.device)], dim=1)
        x = x + self.modality(is_image.long())
        for block in self.blocks:
            x = block(x, is_image)
        return SequenceClassifierOutput(logits=self.itm_head(self.norm(x[:, 0])))
