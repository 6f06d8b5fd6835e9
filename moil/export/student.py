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

import importlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

import moil
from moil.approx import Adapter, Approximation, Sharing
from moil.approx.adapter import SEP
from moil.checkpoint import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    check_matches,
    load_checkpoint,
    save_checkpoint,
)
from moil.export._fs import publish_dir

__all__ = [
    "Student",
    "check_shapes",
    "decode_component",
    "encode_component",
    "load_student",
    "save_student",
]

FORMAT = "moil.student"
VERSION = 1
JSON_NAME = "student.json"
TENSORS_NAME = "student.safetensors"


@attrs.frozen(eq=False)
class Student:
    """A loaded student: everything needed to merge it into a backbone.

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
) -> Student:
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
        approx = decode_component(doc["approximation"], trust_user_classes=trust_user_classes)
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
    return Student(adapter, params, heads, doc.get("base_model"), dict(doc.get("extra") or {}))


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
    want: dict[str, tuple[int, ...]] = {}
    for t in adapter.targets:
        w0 = base[f"{t}.weight"]
        shapes = getattr(adapter.approx, "shapes", None)
        per = (
            shapes(*w0.shape)
            if shapes
            else {
                k: tuple(v.shape) for k, v in adapter.approx.init(w0, base.get(f"{t}.bias")).items()
            }
        )
        for name, shape in per.items():
            want.setdefault(f"{adapter.owner(t, name)}{SEP}{name}", tuple(shape))
    expected = {k: torch.empty(s, device="meta") for k, s in want.items()}
    check_matches(params, expected, source="load_student", dtypes=False)


# ----------------------------------------------------------------------------- components as JSON


def encode_component(obj: Any) -> dict[str, Any]:
    """``{"class": "module:QualName", "fields": {...}}`` for an ``attrs`` instance.

    Fields are those ``__init__`` accepts (by their init name); values may be
    ``None``, bools, numbers, strings, lists, tuples, sets, str-keyed dicts and
    nested ``attrs`` instances. Tuples, sets and dicts are tagged so they decode
    to the same types.
    """
    cls = type(obj)
    if not attrs.has(cls):
        raise TypeError(
            f"{cls.__qualname__} is not an attrs class; only attrs components can be stored."
        )
    if "<locals>" in cls.__qualname__:
        raise TypeError(
            f"{cls.__qualname__} is defined inside a function; define it at module level."
        )
    fields = {
        f.alias: _encode(getattr(obj, f.name), f"{cls.__qualname__}.{f.name}")
        for f in attrs.fields(cls)
        if f.init
    }
    return {"class": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}


def _encode(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_encode(v, where) for v in value]
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, where) for v in value]}
    if isinstance(value, (set, frozenset)):
        return {"__frozenset__": sorted((_encode(v, where) for v in value), key=repr)}
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: _encode(v, where) for k, v in value.items()}}
    if attrs.has(type(value)):
        return encode_component(value)
    raise TypeError(f"cannot store {where} = {value!r} ({type(value).__name__}) as JSON.")


def decode_component(spec: Mapping[str, Any], *, trust_user_classes: bool = False) -> Any:
    """Rebuild an ``attrs`` instance from :func:`encode_component`'s output."""
    path = spec["class"]
    module, _, qualname = str(path).partition(":")
    if not module or not qualname:
        raise ValueError(f"class path {path!r} is not 'module:QualName'.")
    if not _in_moil(module) and not trust_user_classes:
        raise PermissionError(
            f"the student uses the class {path!r} from outside moil; loading imports its module, "
            "which runs its code. If you trust it, pass trust_user_classes=True."
        )
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ValueError(
            f"unknown class {path!r} ({err}); install the package that defines it."
        ) from None
    if not (isinstance(obj, type) and attrs.has(obj)):
        raise ValueError(f"{path!r} is not an attrs class; only attrs components are rebuilt.")
    if not _in_moil(obj.__module__) and not trust_user_classes:
        raise PermissionError(
            f"{path!r} resolves to {obj.__module__}.{obj.__qualname__}, a class from outside "
            "moil; if you trust it, pass trust_user_classes=True."
        )
    fields = {k: _decode(v, trust_user_classes) for k, v in dict(spec["fields"]).items()}
    try:
        return obj(**fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"cannot rebuild {path!r} from fields {spec['fields']}: {err}") from None


def _in_moil(module: str) -> bool:
    return module == "moil" or module.startswith("moil.")


def _decode(value: Any, trust: bool) -> Any:
    if isinstance(value, list):
        return [_decode(v, trust) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tuple__" in value:
        return tuple(_decode(v, trust) for v in value["__tuple__"])
    if "__frozenset__" in value:
        return frozenset(_decode(v, trust) for v in value["__frozenset__"])
    if "__dict__" in value:
        return {k: _decode(v, trust) for k, v in value["__dict__"].items()}
    return decode_component(value, trust_user_classes=trust)


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
