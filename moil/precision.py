"""Mixed precision of the forward pass: the backbone run under ``torch.autocast``.

Only the forward is cast: teacher, targets and students stay fp32 master copies, and
imitation (weights only) runs in fp32. Floating outputs come back as fp32, so losses
and metrics are computed in full precision.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch
from torch import Tensor

__all__ = ["DTYPES", "Autocast", "autocast_forward"]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_forward(fn: Callable[[], Mapping[str, Tensor]], dtype: torch.dtype, device_type: str) -> dict[str, Tensor]:
    """``fn()`` under ``torch.autocast(device_type, dtype)``, floating outputs cast to fp32."""
    with torch.autocast(device_type=device_type, dtype=dtype):
        out = fn()
    return {k: v.float() if v.is_floating_point() else v for k, v in out.items()}


@attrs.frozen(eq=False)
class Autocast:
    """A backbone whose forward runs under ``torch.autocast`` in ``dtype`` (bf16/fp16)."""

    backbone: Any
    dtype: torch.dtype

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backbone, name)

    def __call__(self, params: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        device = next(iter(params.values())).device.type if params else "cpu"
        return autocast_forward(lambda: self.backbone(params, batch), self.dtype, device)
