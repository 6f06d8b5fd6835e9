"""Random batches for the tiny ViLT ITM model, shared by the recipe tests."""

from __future__ import annotations

import torch


def make_batches(n: int, seed: int = 0, size: int = 4):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "input_ids": torch.randint(0, 99, (size, 7), generator=g),
            "attention_mask": torch.ones(size, 7, dtype=torch.long),
            "pixel_values": torch.randn(size, 3, 32, 32, generator=g),
            "itm_labels": torch.randint(0, 2, (size,), generator=g),
        }
        for _ in range(n)
    ]
