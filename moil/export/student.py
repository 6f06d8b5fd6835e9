"""The compact student file: adapter parameters, heads, and how to rebuild the adapter.

A student directory holds two files:

* ``student.safetensors`` — a :mod:`moil.checkpoint` file with the adapter's flat
  parameters under ``"adapter/<owner>::<name>"`` and head parameters under
  ``"heads/<parameter name>"``;
* ``student.json`` — the format version, the moil version, the approximation as
  ``{"class": "module:QualName", "fields": {...}}``, the targets, the sharing rule
  ``{"keys", "strip"}`` (or ``null``), the key lists of both tensor groups, the
  base model's name or path, and free-form ``extra``.

Loading re-creates the approximation by import path. Only ``attrs`` classes are
rebuilt, from JSON values passed to their ``__init__``; classes outside ``moil.``
are imported only with ``trust_user_classes=True`` (importing a module runs its code).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

import moil
from moil.approx import SEP, Adapter, Approximation, Sharing
from moil.checkpoint import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    check_matches,
    load_checkpoint,
    save_checkpoint,
)
from moil.export._fs import publish_dir
from moil.export.components import decode_component, encode_component

__all__ = ["SavedStudent", "check_shapes", "load_student", "save_student"]

FORMAT = "moil.student"
VERSION = 1
JSON_NAME = "student.json"
TENSORS_NAME = "student.safetensors"


@attrs.frozen(eq=False)
class SavedStudent:
    """A student loaded by :func:`load_student`: everything needed to merge it into a backbone.

    (Not :class:`moil.recipes.Student`, which says how a student is *trained*.)

    Attributes:
      adapter: the rebuilt :class:`~moil.approx.Adapter`.
      params: its flat parameters ``{"<owner>::<name>": Tensor}``.
      heads: head parameters ``{parameter name: Tensor}`` (may be empty).
      base_model: the base model's name or path, if recorded.
      extra: the free-form JSON given to :func:`save_student`.
    """

    adapter: Adapter
    params: dict[str, Tensor]
    heads: dict[str, Tensor]
    base_model: str | None
    extra: dict[str, Any]


def save_student(
    out_dir: str | os.PathLike,
    adapter: Adapter,
    params: Mapping[str, Tensor],
    heads: Mapping[str, Tensor] | None = None,
    *,
    base_model: str | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``student.safetensors`` + ``student.json`` to a new directory ``out_dir``.

    The directory is built beside ``out_dir`` and renamed into place (both files
    appear together or not at all); a non-empty ``out_dir`` is replaced only with
    ``overwrite=True`` and only if it is a previous student.

    Args:
      out_dir: the directory to create.
      adapter: the :class:`~moil.approx.Adapter` ``params`` belong to; its
        approximation must be a module-level ``attrs`` class with JSON-able fields.
      params: ``adapter``'s flat parameters, e.g. from ``adapter.init(base)``.
      heads: trained head parameters keyed by model parameter name.
      base_model: the base model's hub id or local path, recorded for users.
      extra: JSON-serialisable information (metrics, recipe, ...).
      overwrite: replace a previous student in ``out_dir``.

    Returns:
      ``out_dir`` as a :class:`~pathlib.Path`.
    """
    if not isinstance(adapter, Adapter):
        raise TypeError(
            f"save_student: adapter must be a moil.approx.Adapter, got {type(adapter).__name__}."
        )
    heads, extra = dict(heads or {}), dict(extra or {})
    _check_owners(adapter, params, where="save_student")
    approximation = encode_component(adapter.approx)
    if encode_component(decode_component(approximation, trust_user_classes=True)) != approximation:
        raise ValueError(
            f"save_student: {type(adapter.approx).__name__} does not survive a JSON round trip "
            f"({approximation}); give it plain fields (numbers, strings, tuples, attrs classes)."
        )
    doc = {
        "format": FORMAT,
        "format_version": VERSION,
        "moil_version": moil.__version__,
        "approximation": approximation,
        "targets": list(adapter.targets),
        "sharing": None
        if adapter.sharing is None
        else {"keys": sorted(adapter.sharing.keys), "strip": adapter.sharing.strip},
        "params": sorted(params),
        "heads": sorted(heads),
        "base_model": None if base_model is None else str(base_model),
        "extra": extra,
    }
    try:
        text = json.dumps(doc, indent=2, sort_keys=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"save_student: extra is not JSON-serialisable ({err}).") from None
    tensors = {f"adapter/{k}": v for k, v in params.items()}
    tensors.update({f"heads/{k}": v for k, v in heads.items()})

    def write(tmp: Path) -> None:
        save_checkpoint(tmp / TENSORS_NAME, tensors, {"kind": FORMAT})
        (tmp / JSON_NAME).write_text(text + "\n", encoding="utf-8")

    return publish_dir(out_dir, write, overwrite=overwrite, marker=JSON_NAME, kind="student")


def load_student(
    directory: str | os.PathLike,
    *,
    base: Mapping[str, Tensor] | None = None,
    trust_user_classes: bool = False,
    device: str | torch.device = "cpu",
) -> SavedStudent:
    """Read a directory written by :func:`save_student`.

    Args:
      directory: the student directory.
      base: optional ``{"<t>.weight": (out, in), "<t>.bias": (out,)}`` (e.g.
        ``backbone.base()``); when given, every parameter is checked to have the
        shape the approximation needs for that layer.
      trust_user_classes: allow importing approximation classes outside ``moil.``.
      device: where the returned tensors live.

    Raises:
      FileNotFoundError: the directory or one of its two files is missing.
      CorruptCheckpointError: unreadable JSON or tensors, unknown format or class.
      CheckpointMismatchError: keys or shapes disagree with the adapter or ``base``.
      PermissionError: the class is outside ``moil.`` and ``trust_user_classes`` is False.
    """
    directory = Path(directory)
    for name in (JSON_NAME, TENSORS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"load_student: {str(directory / name)!r} does not exist; a student directory "
                f"holds {JSON_NAME} and {TENSORS_NAME}, both written by moil.export.save_student."
            )
    doc = _read_json(directory / JSON_NAME)
    try:
        spec = _without_side(doc["approximation"])
        approx = decode_component(spec, trust_user_classes=trust_user_classes)
        if not isinstance(approx, Approximation):
            raise TypeError(
                f"{type(approx).__name__} is not an Approximation (init/weight/bias/...)"
            )
        sharing = (
            None
            if doc["sharing"] is None
            else Sharing(doc["sharing"]["keys"], doc["sharing"]["strip"])
        )
        adapter = Adapter(approx, doc["targets"], sharing)
        param_keys, head_keys = set(doc["params"]), set(doc["heads"])
    except PermissionError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptCheckpointError(
            f"load_student: cannot rebuild the adapter described in "
            f"{str(directory / JSON_NAME)!r}: {type(err).__name__}: {err}"
        ) from None
    flat, _ = load_checkpoint(directory / TENSORS_NAME, device=device)
    params = {k[len("adapter/") :]: v for k, v in flat.items() if k.startswith("adapter/")}
    heads = {k[len("heads/") :]: v for k, v in flat.items() if k.startswith("heads/")}
    if (
        set(params) != param_keys
        or set(heads) != head_keys
        or len(params) + len(heads) != len(flat)
    ):
        raise CheckpointMismatchError(
            f"load_student: {TENSORS_NAME} and {JSON_NAME} in {str(directory)!r} list different "
            "tensors; they come from different saves — save the student again."
        )
    _check_owners(adapter, params, where="load_student")
    if base is not None:
        check_shapes(adapter, params, base)
    return SavedStudent(adapter, params, heads, doc.get("base_model"), dict(doc.get("extra") or {}))


def check_shapes(
    adapter: Adapter, params: Mapping[str, Tensor], base: Mapping[str, Tensor]
) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``params`` has exactly the keys and
    shapes ``adapter`` makes for ``base`` (as ``adapter.init(base)`` would)."""
    missing = [t for t in adapter.targets if f"{t}.weight" not in base]
    if missing:
        raise CheckpointMismatchError(
            f"student made for another model/config: targets {missing[:3]} have no weight in "
            "the base parameters."
        )
    expected = {k: torch.empty(s, device="meta") for k, s in adapter.shapes(base).items()}
    check_matches(params, expected, source="load_student", dtypes=False)


# ----------------------------------------------------------------------------- helpers


def _check_owners(adapter: Adapter, params: Mapping[str, Tensor], *, where: str) -> None:
    owners = set(adapter.targets) | set(adapter.groups())
    bad = []
    for key, value in params.items():
        owner, sep, name = key.rpartition(SEP)
        if not sep or not name or owner not in owners or not isinstance(value, Tensor):
            bad.append(key)
    if bad:
        raise CheckpointMismatchError(
            f"{where}: parameter keys {sorted(bad)[:3]} do not belong to this adapter (keys look "
            f"like '<target or group>{SEP}<name>' for targets such as {list(adapter.targets)[:2]}); "
            "params and adapter come from different models or configs."
        )


def _without_side(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    """A student saved before the output side became its own class names ``Transform`` or
    ``Hybrid`` with a ``side`` field: read it as the class of that side."""
    fields = spec.get("fields") if isinstance(spec, Mapping) else None
    if not isinstance(fields, Mapping) or "side" not in fields:
        return spec
    renamed = _SIDED.get((spec.get("class"), fields["side"]))
    if renamed is None:
        return spec  # not a built-in's old layout: the class's own error says what is wrong
    return {"class": renamed, "fields": {k: v for k, v in fields.items() if k != "side"}}


_SIDED = {
    ("moil.approx.transform:Transform", "input"): "moil.approx.transform:Transform",
    ("moil.approx.transform:Transform", "output"): "moil.approx.transform:OutputTransform",
    ("moil.approx.hybrid:Hybrid", "input"): "moil.approx.hybrid:Hybrid",
    ("moil.approx.hybrid:Hybrid", "output"): "moil.approx.hybrid:OutputHybrid",
}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptCheckpointError(
            f"load_student: {str(path)!r} is not valid JSON ({err}); the file is corrupt or "
            "truncated — delete it or restore a backup."
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CorruptCheckpointError(
            f"load_student: {str(path)!r} is not a moil student description (format "
            f"{doc.get('format') if isinstance(doc, dict) else None!r}, expected {FORMAT!r})."
        )
    version = doc.get("format_version")
    if not isinstance(version, int) or version > VERSION:
        raise CorruptCheckpointError(
            f"load_student: {str(path)!r} has format version {version!r}; this moil reads "
            f"versions <= {VERSION} — upgrade moil."
        )
    return doc
