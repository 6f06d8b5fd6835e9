"""The checkpoint file: flat ``dict[str, Tensor]`` + JSON metadata in one safetensors file.

Safetensors only (never pickle): a checkpoint holds tensors and text, so loading
one can never run code. Writes are atomic — a crash or a kill mid-write leaves
the previous checkpoint intact — and verified: the header carries a SHA-256 of the
tensor data (:func:`moil.checkpoint.atomic.tensor_digest`), checked on load, so a
flipped byte is an error, never a silently different state. ``keep_previous=True``
keeps the last good file as ``<stem>.prev.safetensors`` until the new one is verified.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from moil.checkpoint.atomic import fsync_dir, fsync_file, read_unreplaced, temp_path, tensor_digest
from moil.checkpoint.errors import CheckpointError, CheckpointMismatchError, CorruptCheckpointError
from moil.checkpoint.match import check_matches

_fsync_file, _fsync_dir = fsync_file, fsync_dir  # the names moil.export reads

__all__ = [
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "CheckpointMismatchError",
    "CorruptCheckpointError",
    "check_matches",
    "load_checkpoint",
    "previous_path",
    "read_metadata",
    "save_checkpoint",
]

FORMAT = "moil.checkpoint"
VERSION = 1
KEY_SEP = "/"
_TAG, _VER, _META, _SUM = "moil.format", "moil.format_version", "moil.metadata", "moil.sha256"


# ----------------------------------------------------------------------------- writing


def save_checkpoint(
    path: str | os.PathLike,
    tensors: Mapping[str, Tensor],
    metadata: Mapping[str, Any] | None = None,
    *,
    keep_previous: bool = False,
) -> Path:
    """Write ``tensors`` and JSON ``metadata`` to ``path`` atomically, and verify it.

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
      keep_previous: keep the file ``path`` held before as :func:`previous_path`
        (the last good checkpoint), replaced only once the new one is verified.

    Returns:
      ``path`` as a :class:`~pathlib.Path`.

    Raises:
      TypeError: a value in ``tensors`` is not a tensor, or ``metadata`` is not JSON.
      IsADirectoryError: ``path`` is a directory (nothing is written).
      CorruptCheckpointError: the file read back differs from what was written
        (a failing disk); the previous file is left in place.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint path {str(path)!r} is a directory; give a file path inside it, e.g. "
                                f"{str(path / 'checkpoint.safetensors')!r}.")
    blob = _prepare(tensors)
    header = {"format": "pt", _TAG: FORMAT, _VER: str(VERSION), _META: _dump_metadata(metadata),
              _SUM: tensor_digest(blob)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        save_file(blob, tmp, metadata=header)
        fsync_file(tmp)
        _verify(tmp, shown=path)
        if keep_previous and path.is_file():
            _keep(path, previous_path(path))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def previous_path(path: str | os.PathLike) -> Path:
    """Where ``save_checkpoint(path, ..., keep_previous=True)`` keeps the last good file."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _keep(path: Path, previous: Path) -> None:
    # A hard link (else a copy) renamed into place: `path` itself never goes missing.
    tmp = temp_path(previous)
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, previous)


def _verify(file: Path, *, shown: Path) -> None:
    try:
        with safe_open(file, framework="pt", device="cpu") as f:
            want = (f.metadata() or {}).get(_SUM)
            got = tensor_digest({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CorruptCheckpointError(f"checkpoint {str(shown)!r} could not be read back after writing "
                                     f"({type(err).__name__}: {err}); check the disk.") from None
    if got != want:
        raise CorruptCheckpointError(f"checkpoint {str(shown)!r} read back differs from what was "
                                     "written (checksum mismatch); check the disk. The old file is kept.")


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
    # A run may be saving over the file as we read it: a torn read is retried, not "corrupt".
    busy = lambda tries: CorruptCheckpointError(  # noqa: E731
        f"checkpoint {str(path)!r} was replaced by a newer save during each of {tries} reads; read it while "
        "its run is paused or finished, or copy it first.")
    try:
        tensors, metadata = read_unreplaced(path, _read_verified, busy=busy)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {str(path)!r} was removed while it was being read; "
                                "check what else writes or cleans that folder.") from None
    if expected is not None:
        check_matches(tensors, expected, source=str(path))
    if device.type != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, metadata


def _read_verified(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(tensors, metadata)`` of one read of ``path``, header and checksum checked."""
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
    if _SUM in header and tensor_digest(tensors) != header[_SUM]:
        previous = previous_path(path)
        keep = (f" The previous good checkpoint is {str(previous)!r}: move it over this one to resume "
                "from it." if previous.is_file() else " Delete it or restore a backup.")
        raise CorruptCheckpointError(
            f"checkpoint {str(path)!r} is corrupt: its tensor data does not match the SHA-256 "
            f"checksum written with it (a changed or damaged byte).{keep}"
        )
    return tensors, metadata


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without reading (or checking) its tensors.

    Raises:
      FileNotFoundError / CorruptCheckpointError: as :func:`load_checkpoint`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist.")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError, UnicodeDecodeError) as err:
        raise CorruptCheckpointError(
            f"cannot read checkpoint {str(path)!r}: the file is corrupt or truncated; delete "
            f"it or restore a backup. ({type(err).__name__}: {err})"
        ) from None
    return _check_header(path, header)


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
