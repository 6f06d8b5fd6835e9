"""Mixed precision of the forward pass: the backbone run under ``torch.autocast``.

Only the forward is cast: teacher, targets and students stay fp32 master copies, and
imitation (weights only) runs in fp32. Floating outputs come back as fp32, so losses
and metrics are computed in full precision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch
from torch import Tensor

__all__ = ["DTYPES", "Autocast", "autocast_forward", "forward_precision"]

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


def forward_precision(backbone: Any, tensors: Mapping[str, Tensor]) -> contextlib.AbstractContextManager:
    """The forward's bf16 autocast for work that feeds it, e.g. LoRA's merge ``W0 + s·B A``.

    Under a bf16 :class:`Autocast` backbone the merged weight is cast to bf16 at its first
    matmul anyway; making it in bf16 (one ``addmm``, fp32 accumulation) costs a third of the
    fp32 product and its backward on bf16 hardware, as PEFT's ``(x A) B`` path does. A no-op
    for fp32 and for fp16: with no loss scaling, the fp16 backward of the merge underflows
    (``Bᵀ dW`` of a small ``B``). ``tensors`` tell the device.
    """
    if not isinstance(backbone, Autocast) or backbone.dtype != torch.bfloat16:
        return contextlib.nullcontext()
    device = next(iter(tensors.values())).device.type if tensors else "cpu"
    return torch.autocast(device_type=device, dtype=backbone.dtype)
