"""Export a low-rank student as a PEFT LoRA adapter directory.

Writes exactly what ``peft.PeftModel.from_pretrained(base_model, out_dir)`` reads
(format checked against PEFT 0.21's ``save_pretrained`` output), without
importing PEFT:

* ``adapter_model.safetensors`` with, for each target ``t``,
  ``base_model.model.<t>.lora_A.weight`` = ``A`` ``(r, in)`` and
  ``base_model.model.<t>.lora_B.weight`` = ``B`` ``(out, r)``, plus each head
  parameter ``p`` as ``base_model.model.<p>``; safetensors metadata ``{"format": "pt"}``;
* ``adapter_config.json``: ``peft_type="LORA"``, ``r``, ``lora_alpha = s·r`` (PEFT's
  scaling ``lora_alpha / r`` then equals the :class:`~moil.approx.LowRank` scale
  ``s``), ``use_rslora=False``, ``lora_dropout=0``, ``bias="none"``, the targets
  as full module paths, the head modules as ``modules_to_save``.

PEFT's layer computes ``W0 x + b0 + (α/r)·B A x = (W0 + s·B A) x + b0``, moil's
``LowRank`` merge. A ``lora_a`` shared by a :class:`~moil.approx.Sharing` group is
written once per member (same product). Only ``LowRank`` students fit this format:
``Transform``/``Hybrid`` merge into weights PEFT's LoRA cannot express.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor

from moil.approx import Adapter, LowRank
from moil.checkpoint.files import _prepare
from moil.export._fs import publish_dir

__all__ = ["PEFT_PREFIX", "export_peft", "peft_state_dict"]

#: Where PEFT puts the wrapped model's parameters: ``"base_model.model.<name>"``.
PEFT_PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
NOT_LOW_RANK = (
    "export_peft: PEFT export holds only LowRank students, got {name}: its merged weight is "
    "not W0 + s·B·A, which PEFT's LoRA cannot express. Use export_merged (plain weights) or "
    "save_student (moil's own format) instead."
)


def peft_state_dict(
    adapter: Adapter, params: Mapping[str, Tensor], heads: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """The ``adapter_model.safetensors`` tensors for a LowRank ``adapter`` (no copies).

    Returns:
      ``{"base_model.model.<t>.lora_A.weight": (r, in), "….lora_B.weight": (out, r),
      "base_model.model.<head>": head}``.
    """
    if not isinstance(adapter, Adapter):
        raise TypeError(
            f"export_peft: adapter must be a moil.approx.Adapter, got {type(adapter).__name__}."
        )
    if not isinstance(adapter.approx, LowRank):
        raise TypeError(NOT_LOW_RANK.format(name=type(adapter.approx).__name__))
    rank = adapter.approx.rank
    out: dict[str, Tensor] = {}
    for t in adapter.targets:
        view = adapter.target_params(params, t)
        for key in ("lora_a", "lora_b"):
            if key not in view:
                raise KeyError(
                    f"export_peft: no {key!r} for target {t!r} in params; build params with "
                    "adapter.init(base) for this adapter."
                )
        a, b = view["lora_a"], view["lora_b"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise ValueError(
                f"export_peft: target {t!r} has lora_a {tuple(a.shape)} and lora_b "
                f"{tuple(b.shape)}, expected (r, in) and (out, r) with r={rank}."
            )
        out[f"{PEFT_PREFIX}{t}.lora_A.weight"] = a
        out[f"{PEFT_PREFIX}{t}.lora_B.weight"] = b
    for name, value in (heads or {}).items():
        out[f"{PEFT_PREFIX}{name}"] = value
    return out


def export_peft(
    out_dir: str | os.PathLike,
    adapter: Adapter,
    params: Mapping[str, Tensor],
    *,
    base_model_name_or_path: str | None = None,
    heads: Mapping[str, Tensor] | None = None,
    head_modules: tuple[str, ...] | list[str] = (),
    overwrite: bool = False,
) -> Path:
    """Write a PEFT LoRA adapter directory for a :class:`~moil.approx.LowRank` student.

    Heads are exported through PEFT's ``modules_to_save``: each head module is
    replaced, on load, by a copy of the base module with the given parameters.
    A head module's parameters that ``heads`` omits keep the base model's values.

    Args:
      out_dir: the directory to create (replaced only with ``overwrite=True`` and
        only if it holds a previous ``adapter_config.json``).
      adapter: an :class:`~moil.approx.Adapter` over ``LowRank(rank=r, scale=s)``.
      params: its flat parameters.
      base_model_name_or_path: recorded in the config (PEFT loads the base from it
        when using ``AutoPeftModel``).
      heads: trained head parameters keyed by model parameter name, e.g.
        ``{"classifier.weight": (labels, hidden), "classifier.bias": (labels,)}``.
      head_modules: module paths for ``modules_to_save``; default: the modules
        owning ``heads``' parameters. Must cover every head parameter.
      overwrite: replace a previous PEFT export in ``out_dir``.

    Returns:
      ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
      TypeError: the approximation is not ``LowRank``.
      ValueError: a head module overlaps a target or does not own a head parameter.
    """
    heads = dict(heads or {})
    tensors = _prepare(peft_state_dict(adapter, params, heads))  # CPU, contiguous, unshared
    modules = _head_modules(adapter, heads, head_modules)
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": adapter.approx.rank,
        "lora_alpha": _alpha(adapter.approx),
        "use_rslora": False,
        "use_dora": False,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "target_modules": list(adapter.targets),
        "modules_to_save": list(modules) or None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": None,
        "layers_pattern": None,
    }

    def write(tmp: Path) -> None:
        save_file(tensors, tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    return publish_dir(out_dir, write, overwrite=overwrite, marker=CONFIG_NAME, kind="PEFT export")


def _alpha(approx: LowRank) -> int | float:
    """``lora_alpha = s·r``, an int when exact (PEFT's config types it as int)."""
    alpha = approx.scale * approx.rank
    return int(alpha) if float(alpha).is_integer() else float(alpha)


def _head_modules(
    adapter: Adapter, heads: Mapping[str, Tensor], head_modules: tuple[str, ...] | list[str]
) -> tuple[str, ...]:
    owners = {name.rpartition(".")[0] for name in heads}
    if "" in owners:
        raise ValueError(
            "export_peft: a head parameter has no module path (no '.'); PEFT cannot save it."
        )
    modules = tuple(head_modules) or tuple(sorted(owners))
    uncovered = sorted(n for n in heads if not any(n.startswith(f"{m}.") for m in modules))
    if uncovered:
        raise ValueError(
            f"export_peft: head parameters {uncovered[:3]} are not inside head_modules "
            f"{list(modules)}; add their modules to head_modules."
        )
    for m in modules:
        # PEFT wraps every module whose name *ends with* an entry of modules_to_save.
        clash = [t for t in adapter.targets if t.endswith(m) or t.startswith(f"{m}.")]
        if clash:
            raise ValueError(
                f"export_peft: head module {m!r} overlaps the LoRA target(s) {clash[:3]} (PEFT "
                "matches modules_to_save by name suffix); a head cannot also be a target."
            )
    return modules
