"""A content-keyed, checksummed, atomically written safetensors cache for computed tensors.

A cache entry is one ``.safetensors`` file whose name carries a short prefix of a SHA-256
*key* over everything the tensors depend on (input bytes, configuration, format version).
The header metadata stores the full key and a SHA-256 *checksum* of the stored tensor
bytes. Reading verifies both: a file that cannot be parsed, whose key differs, or whose
bytes no longer match the checksum is never returned — it is recomputed with a
``CacheWarning`` (or, with ``on_corrupt="raise"``, raises :class:`CorruptCacheError`).
Writes go to a temporary file in the same folder, then ``os.replace`` onto the final name,
so a crash never leaves a half-written entry under the real name.

The folder is, in order: the ``cache_dir`` argument, ``$MOIL_CACHE``, ``~/.cache/moil``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from moil.checkpoint.atomic import read_unreplaced

__all__ = [
    "CACHE_ENV",
    "CacheWarning",
    "CorruptCacheError",
    "content_key",
    "default_cache_dir",
    "load_or_compute",
    "tensor_checksum",
]

CACHE_ENV = "MOIL_CACHE"


class CacheWarning(UserWarning):
    """A cache entry was unusable and is being recomputed."""


class CorruptCacheError(RuntimeError):
    """A cache entry is unreadable, belongs to other inputs, or fails its checksum."""


def default_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` if given, else ``$MOIL_CACHE`` if set, else ``~/.cache/moil``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "moil"


def content_key(config: Mapping[str, object], tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 hex digest of a JSON-able ``config`` and the raw bytes, dtypes and shapes of
    ``tensors`` (e.g. ``{"images": (N, 28, 28) uint8}``); equal inputs give equal keys."""
    h = hashlib.sha256(json.dumps(dict(config), sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tensor_checksum(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``tensors`` (the stored data)."""
    return content_key({}, tensors)


def _read_verified(path: Path, key: str) -> dict[str, Tensor]:
    """Load ``path`` and check its key and checksum; raise CorruptCacheError otherwise."""
    try:
        with safe_open(path, framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except (OSError, ValueError, SafetensorError) as err:
        raise CorruptCacheError(f"cache file {path} cannot be read ({err}).") from err
    if meta.get("key") != key:
        raise CorruptCacheError(
            f"cache file {path} was written for key {meta.get('key')!r}, expected {key!r}."
        )
    if meta.get("checksum") != tensor_checksum(tensors):
        raise CorruptCacheError(f"cache file {path} fails its checksum: its data was altered.")
    return tensors


def _write_atomic(path: Path, tensors: Mapping[str, Tensor], key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"key": key, "checksum": tensor_checksum(data)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(data, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_or_compute(
    name: str,
    key: str,
    compute: Callable[[], Mapping[str, Tensor]],
    *,
    cache_dir: str | Path | None = None,
    on_corrupt: Literal["recompute", "raise"] = "recompute",
) -> dict[str, Tensor]:
    """Return the tensors cached under ``(name, key)``, computing and storing them if absent.

    Args:
        name: a readable file prefix, e.g. ``"efficientnet_lite0"``.
        key: a :func:`content_key` of everything the result depends on.
        compute: called on a miss (or a corrupt entry); returns ``{name: tensor}``.
        cache_dir: folder override (see :func:`default_cache_dir`).
        on_corrupt: ``"recompute"`` warns with :class:`CacheWarning` and overwrites the entry;
            ``"raise"`` raises :class:`CorruptCacheError`.

    Returns:
        ``dict[str, Tensor]``, the same tensors ``compute`` returned (CPU, contiguous).
    """
    if on_corrupt not in ("recompute", "raise"):
        raise ValueError(
            f"on_corrupt must be 'recompute' or 'raise', got on_corrupt={on_corrupt!r}."
        )
    path = default_cache_dir(cache_dir) / f"{name}-{key[:20]}.safetensors"
    if path.exists():
        try:  # another worker may be writing the same entry: a torn read is retried
            return read_unreplaced(path, lambda p: _read_verified(p, key), busy=lambda tries: CorruptCacheError(
                f"cache file {path} was rewritten by another process during each of {tries} reads."))
        except FileNotFoundError:
            pass  # removed meanwhile: a miss
        except CorruptCacheError as err:
            if on_corrupt == "raise":
                raise CorruptCacheError(f"{err} Delete the file to recompute it.") from err
            warnings.warn(f"{err} Recomputing and overwriting it.", CacheWarning, stacklevel=2)
    result = {k: v.detach().cpu().contiguous() for k, v in compute().items()}
    _write_atomic(path, result, key)
    return result
