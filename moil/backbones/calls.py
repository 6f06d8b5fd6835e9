"""Between a batch and a model: ``inputs`` (batch → keyword arguments) and
``outputs`` (model output → moil's outputs dict) for :class:`~moil.backbones.Backbone`.

Small immutable callables rather than lambdas, so a backbone stays picklable
and printable.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import attrs
from torch import Tensor, nn

__all__ = ["SelectInputs", "forward_inputs", "Logits", "logits_of", "LABEL_KEYS"]

#: Batch keys that hold labels: never passed to the model.
LABEL_KEYS = frozenset({"labels", "itm_labels", "vqa_targets", "pair_labels"})


@attrs.frozen
class SelectInputs:
    """``batch → kwargs``: the listed keys present in the batch, plus fixed keyword arguments.

    Args:
      keys: batch keys to pass, if present.
      required: keys that must be present (a clear ``KeyError`` otherwise).
      fixed: ``(name, value)`` pairs always passed, e.g. ``(("return_dict", True),)``.
    """

    keys: tuple[str, ...] = attrs.field(converter=tuple)
    required: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    fixed: tuple[tuple[str, Any], ...] = attrs.field(default=(), converter=tuple)

    def __call__(self, batch: Mapping[str, Tensor]) -> dict:
        missing = [k for k in self.required if k not in batch]
        if missing:
            raise KeyError(
                f"batch lacks {missing}; this model needs {list(self.required)} "
                f"(got keys {sorted(batch)})."
            )
        kwargs = {k: batch[k] for k in self.keys if k in batch}
        kwargs.update(self.fixed)
        return kwargs


def forward_inputs(model: nn.Module) -> SelectInputs:
    """A :class:`SelectInputs` passing the batch keys ``model.forward`` names (labels excepted)."""
    sig = inspect.signature(model.forward)
    named = [
        n for n, p in sig.parameters.items()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n not in LABEL_KEYS
    ]
    fixed = (("return_dict", True),) if "return_dict" in named else ()
    return SelectInputs([n for n in named if n != "return_dict"], fixed=fixed)


def logits_of(out: Any) -> Tensor:
    """``out.logits`` of a ``ModelOutput``; the first item of a tuple; a tensor as is."""
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    return out[0]


@attrs.frozen
class Logits:
    """``(output, batch) → {key: logits}``, e.g. ``Logits("vqa_logits")``."""

    key: str = "logits"

    def __call__(self, out: Any, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {self.key: logits_of(out)}
