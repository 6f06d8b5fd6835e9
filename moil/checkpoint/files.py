"""The checkpoint file: flat ``dict[str, Tensor]`` + JSON metadata in one safetensors file.

Safetensors only (never pickle): a checkpoint holds tensors and text, so loading
one can never run code. Writes are atomic — a crash or a kill mid-write leaves
the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

__all__ = [
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "CheckpointMismatchError",
    "CorruptCheckpointError",
    "check_matches",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT = "moil.checkpoint"
VERSION = 1
KEY_SEP = "/"
_TAG, _VER, _META = "moil.format", "moil.format_version", "moil.metadata"


class CheckpointError(Exception):
    """Base class of moil's checkpoint errors."""


class CorruptCheckpointError(CheckpointError, ValueError):
    """The file is not a readable moil checkpoint (truncated, garbage, wrong format)."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """The checkpoint is readable but was made for another model or configuration."""


# ----------------------------------------------------------------------------- writing


def save_checkpoint(
    path: str | os.PathLike,
    tensors: Mapping[str, Tensor],
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``tensors`` and JSON ``metadata`` to ``path`` atomically.

    The file is written to ``<path>.tmp-<pid>`` in the same directory, flushed and
    fsynced, then renamed over ``path`` (``os.replace``) and the directory fsynced:
    a crash at any point leaves either the old file or the new one, never a torn
    one, and no temporary file survives an exception. Tensors are detached, moved
    to CPU and made contiguous; tensors sharing storage are cloned. Inputs are
    never modified. Missing parent directories are created.

    Args:
      path: the ``.safetensors`` file to write.
      tensors: ``{key: tensor}``, any shapes/dtypes safetensors supports.
      metadata: JSON-serialisable mapping (it round-trips through ``json``:
        tuples come back as lists).

    Returns:
      ``path`` as a :class:`~pathlib.Path`.

    Raises:
      TypeError: a value in ``tensors`` is not a tensor, or ``metadata`` is not JSON.
    """
    path = Path(path)
    header = {"format": "pt", _TAG: FORMAT, _VER: str(VERSION), _META: _dump_metadata(metadata)}
    blob = _prepare(tensors)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        save_file(blob, tmp, metadata=header)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _dump_metadata(metadata: Mapping[str, Any] | None) -> str:
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping, got {type(metadata).__name__}.")
    try:
        return json.dumps(dict(metadata), sort_keys=True)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"metadata is not JSON-serialisable ({err}); store numbers, strings, lists "
            "and dicts in metadata and tensors in `tensors`."
        ) from None


def _prepare(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous, dense, one storage per tensor — new tensors where needed."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for key, value in tensors.items():
        if not isinstance(key, str):
            raise TypeError(f"checkpoint keys must be strings, got {key!r}.")
        if not isinstance(value, Tensor):
            raise TypeError(
                f"checkpoint value {key!r} is a {type(value).__name__}, not a tensor; store "
                "numbers in the metadata — split_state(state) gives a state's tensors and its "
                "scalars — and a torch.Generator as generator.get_state()."
            )
        if value.layout != torch.strided:
            raise TypeError(f"checkpoint value {key!r} is {value.layout}; call .to_dense() first.")
        t = value.detach().cpu().resolve_conj().resolve_neg().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr and ptr in seen:
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        seen.add(ptr)
        out[key] = t
    return out


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    try:  # POSIX only; Windows cannot open a directory.
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- reading


def load_checkpoint(
    path: str | os.PathLike,
    *,
    expected: Mapping[str, Tensor] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
      path: the ``.safetensors`` file.
      expected: optional ``{key: tensor}`` the checkpoint must match exactly —
        same keys, and for each key the same shape and dtype (values ignored;
        ``torch.empty(..., device="meta")`` tensors work).
      device: where the returned tensors live.

    Returns:
      ``(tensors, metadata)``: new tensors on ``device``; the JSON metadata.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      CorruptCheckpointError: not safetensors, truncated, garbage, or not a moil
        checkpoint of a version this moil reads.
      CheckpointMismatchError: ``expected`` differs in keys, shapes or dtypes.
    """
    path = Path(path)
    device = torch.device(device)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} {what}; checkpoints are files written by "
            "moil.checkpoint.save_checkpoint(path, tensors) — check the path."
        )
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (SafetensorError, OSError, ValueError, RuntimeError, UnicodeDecodeError) as err:
        raise CorruptCheckpointError(
            f"cannot read checkpoint {str(path)!r}: the file is corrupt or truncated; delete "
            f"it or restore a backup. ({type(err).__name__}: {err})"
        ) from None
    metadata = _check_header(path, header)
    if expected is not None:
        check_matches(tensors, expected, source=str(path))
    if device.type != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, metadata


def _check_header(path: Path, header: Mapping[str, str]) -> dict[str, Any]:
    tag, version = header.get(_TAG), header.get(_VER)
    if tag != FORMAT:
        raise CorruptCheckpointError(
            f"{str(path)!r} is a safetensors file but not a moil checkpoint (format tag "
            f"{tag!r}, expected {FORMAT!r}); it was not written by save_checkpoint. Load "
            "plain safetensors files with safetensors.torch.load_file."
        )
    if version is None or not version.isdigit():
        raise CorruptCheckpointError(
            f"{str(path)!r}: format version {version!r} is unreadable; the file is corrupt — "
            "delete it or restore a backup."
        )
    if int(version) > VERSION:
        raise CorruptCheckpointError(
            f"{str(path)!r} has format version {version}, but this moil reads versions <= "
            f"{VERSION}; upgrade moil to load it."
        )
    try:
        metadata = json.loads(header.get(_META, "{}"))
    except json.JSONDecodeError as err:
        raise CorruptCheckpointError(
            f"{str(path)!r}: metadata is not valid JSON ({err}); the file is corrupt or "
            "truncated — delete it or restore a backup."
        ) from None
    if not isinstance(metadata, dict):
        raise CorruptCheckpointError(f"{str(path)!r}: metadata is not a JSON object.")
    return metadata


def check_matches(
    tensors: Mapping[str, Tensor],
    expected: Mapping[str, Tensor],
    *,
    source: str,
    dtypes: bool = True,
) -> None:
    """Raise :class:`CheckpointMismatchError` unless keys, shapes (and ``dtypes``) agree."""
    problems = _problems(tensors, expected, dtypes)
    if problems:
        raise CheckpointMismatchError(
            f"{source}: checkpoint made for another model/config: "
            + "; ".join(problems)
            + ". Load it with the model, approximation and ranks it was saved with."
        )


def _kind(x: Any) -> type:
    # JSON gives back bool / int / float; a template's numpy float is a float.
    return next((k for k in (bool, int, float) if isinstance(x, k)), type(x))


def _problems(got: Mapping[str, Any], want: Mapping[str, Any], dtypes: bool = True) -> list[str]:
    """At most five differences of keys, then shapes / dtypes (tensors) or types (scalars)."""
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    problems = []
    if missing:
        problems.append(f"{len(missing)} key(s) missing from the checkpoint, e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
    for key in sorted(set(want) & set(got)):
        g, w = got[key], want[key]
        if not isinstance(w, Tensor):
            if _kind(g) is not _kind(w):
                problems.append(f"{key!r} is {g!r}, expected a {_kind(w).__name__}")
        elif tuple(g.shape) != tuple(w.shape):
            problems.append(f"{key!r} has shape {tuple(g.shape)}, expected {tuple(w.shape)}")
        elif dtypes and g.dtype != w.dtype:
            problems.append(f"{key!r} has dtype {g.dtype}, expected {w.dtype}")
        if len(problems) >= 5:
            break
    return problems
