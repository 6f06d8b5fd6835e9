"""Checkpoints: flat ``dict[str, Tensor]`` + JSON metadata in one safetensors file.

Safetensors only (never pickle): a checkpoint holds tensors and text, so loading
one can never run code. Writes are atomic — a crash or a kill mid-write leaves
the previous checkpoint intact. Nested state (student, optimiser, RNG, step) is
stored by :func:`flatten`-ing it to ``"/"``-joined keys; :func:`unflatten`
rebuilds it. :func:`encode_generator` / :func:`encode_scalar` turn a
``torch.Generator`` and Python numbers into tensors so a run resumes bitwise.

Example:
  >>> state = {"student": {"q::lora_a": torch.ones(2, 3)}, "step": encode_scalar(7)}
  >>> save_checkpoint(path, flatten(state), {"recipe": "moil"})      # doctest: +SKIP
  >>> tensors, meta = load_checkpoint(path)                          # doctest: +SKIP
  >>> decode_scalar(unflatten(tensors)["step"])                      # doctest: +SKIP
  7
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
    "decode_generator",
    "decode_scalar",
    "encode_generator",
    "encode_scalar",
    "flatten",
    "load_checkpoint",
    "save_checkpoint",
    "unflatten",
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
                f"checkpoint value {key!r} is a {type(value).__name__}, not a tensor; convert "
                "generators with encode_generator and numbers with encode_scalar."
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
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    problems = []
    if missing:
        problems.append(f"{len(missing)} key(s) missing from the checkpoint, e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
    for key in sorted(set(expected) & set(tensors)):
        got, want = tensors[key], expected[key]
        if tuple(got.shape) != tuple(want.shape):
            problems.append(f"{key!r} has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        elif dtypes and got.dtype != want.dtype:
            problems.append(f"{key!r} has dtype {got.dtype}, expected {want.dtype}")
        if len(problems) >= 5:
            break
    if problems:
        raise CheckpointMismatchError(
            f"{source}: checkpoint made for another model/config: "
            + "; ".join(problems)
            + ". Load it with the model, approximation and ranks it was saved with."
        )


# ----------------------------------------------------------------------------- trees


def flatten(tree: Mapping[str, Any], *, prefix: str = "") -> dict[str, Tensor]:
    """``{"a": {"b": t}}`` → ``{"a/b": t}``; inverse of :func:`unflatten`.

    Key segments may contain ``"."`` and ``"::"`` but not ``"/"`` nor be empty;
    leaves must be tensors (use :func:`encode_scalar` / :func:`encode_generator`
    for other state); nested mappings must be non-empty (an empty one has no key
    to store). The tensors themselves are not copied.
    """
    if not isinstance(tree, Mapping):
        raise TypeError(f"flatten: expected a mapping, got {type(tree).__name__} at {prefix!r}.")
    out: dict[str, Tensor] = {}
    for key, value in tree.items():
        if not isinstance(key, str) or not key or KEY_SEP in key:
            raise ValueError(
                f"flatten: key {key!r} under {prefix or '<root>'!r} must be a non-empty string "
                f"without {KEY_SEP!r} (the separator of flat checkpoint keys); rename it."
            )
        path = f"{prefix}{KEY_SEP}{key}" if prefix else key
        if isinstance(value, Tensor):
            out[path] = value
        elif isinstance(value, Mapping):
            if not value:
                raise ValueError(f"flatten: {path!r} is an empty mapping, which cannot be stored.")
            out.update(flatten(value, prefix=path))
        else:
            raise TypeError(
                f"flatten: {path!r} is a {type(value).__name__}; leaves must be tensors "
                "(use encode_scalar / encode_generator)."
            )
    return out


def unflatten(flat: Mapping[str, Tensor]) -> dict[str, Any]:
    """``{"a/b": t}`` → ``{"a": {"b": t}}``; inverse of :func:`flatten`."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(KEY_SEP)
        if not all(parts):
            raise ValueError(f"unflatten: key {key!r} has an empty segment.")
        node = tree
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(
                    f"unflatten: {key!r} nests under {KEY_SEP.join(parts[: i + 1])!r}, "
                    "which is also a tensor."
                )
        if parts[-1] in node:
            raise ValueError(f"unflatten: {key!r} is both a tensor and a prefix of other keys.")
        node[parts[-1]] = value
    return tree


# ----------------------------------------------------------------------------- RNG and scalars


def encode_generator(generator: torch.Generator) -> Tensor:
    """A ``torch.Generator``'s state as a 1-D ``uint8`` CPU tensor (a copy)."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"encode_generator: expected a torch.Generator, got {type(generator).__name__}."
        )
    return generator.get_state().clone()


def decode_generator(state: Tensor, device: str | torch.device = "cpu") -> torch.Generator:
    """A new ``torch.Generator`` on ``device`` in the state :func:`encode_generator` saved."""
    if not isinstance(state, Tensor) or state.dtype != torch.uint8 or state.ndim != 1:
        raise ValueError(
            "decode_generator: state must be the 1-D uint8 tensor made by encode_generator, got "
            + (
                f"{state.dtype} of shape {tuple(state.shape)}"
                if isinstance(state, Tensor)
                else type(state).__name__
            )
            + "."
        )
    generator = torch.Generator(device=device)
    generator.set_state(state.cpu().clone())
    return generator


def encode_scalar(value: bool | float) -> Tensor:
    """A Python ``bool``/``int``/``float`` as a 0-d tensor (bool / int64 / float64), exactly."""
    if isinstance(value, bool):
        return torch.tensor(value, dtype=torch.bool)
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise OverflowError(f"encode_scalar: {value} does not fit in int64.")
        return torch.tensor(value, dtype=torch.int64)
    if isinstance(value, float):
        return torch.tensor(value, dtype=torch.float64)
    raise TypeError(f"encode_scalar: expected bool, int or float, got {type(value).__name__}.")


def decode_scalar(tensor: Tensor) -> bool | int | float:
    """Inverse of :func:`encode_scalar`: the Python number of a 0-d tensor."""
    if not isinstance(tensor, Tensor) or tensor.ndim != 0:
        shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
        raise ValueError(f"decode_scalar: expected a 0-d tensor, got {shape}.")
    return tensor.item()
