"""Crash-safe file writes and tensor checksums, shared by checkpoints and run folders.

A write goes to ``<name>.tmp-<pid>`` in the target's own directory, is flushed and
fsynced, then renamed over the target (``os.replace``) and the directory fsynced: a
crash or a kill at any point leaves either the old file or the new one, never a torn
one. A process killed between writing and renaming leaves its temporary file behind;
:func:`remove_stale_temps` deletes those whose writer is no longer alive.

The tensor checksum is SHA-256 over every tensor's key, dtype, shape and raw bytes in
key order: a flipped byte anywhere in the data changes it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor

T = TypeVar("T")

__all__ = [
    "atomic_write_bytes", "fsync_dir", "fsync_file", "pid_alive", "read_unreplaced", "remove_stale_temps",
    "temp_path", "tensor_digest",
]

_TEMP = re.compile(r"\.tmp-(\d+)$")


def temp_path(path: Path) -> Path:
    """``<path>.tmp-<pid>``: this process's temporary file for ``path`` (same directory)."""
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + ``os.replace``).

    Raises:
      OSError: the directory is missing, read-only or full — the message names
        ``path`` (never the temporary file) and the old file is left as it was.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, f"cannot write {path}: {err.strerror or err}; check that its folder "
                      "exists, is writable and has free space") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (signal 0 probes without signalling)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temps(directory: str | os.PathLike, *, depth: int = 1) -> list[Path]:
    """Delete ``*.tmp-<pid>`` files (and folders) under ``directory`` whose writer
    process is dead; return what was deleted. ``depth`` levels of sub-folders are
    searched too (student folders of a run)."""
    directory = Path(directory)
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        match = _TEMP.search(entry.name)
        if match and int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
        elif depth > 0 and entry.is_dir() and not entry.is_symlink():
            removed += remove_stale_temps(entry, depth=depth - 1)
    return removed


def tensor_digest(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 hex digest of ``tensors``: keys in sorted order, each key's dtype,
    shape and raw bytes (CPU tensors; non-contiguous ones are copied first)."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach()
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def read_unreplaced(path: Path, read: Callable[[Path], T], *, busy: Callable[[int], Exception], tries: int = 5) -> T:
    """``read(path)`` of a file that a concurrent writer may atomically replace.

    A reader that opens the file more than once (safetensors opens it for the header, then
    again for the data) can get one version's header with the next one's bytes — a read
    error or a checksum mismatch that is no fault of either file. Each attempt compares
    the file's identity (device, inode, size, mtime) before and after: if the file was
    replaced (or removed) meanwhile, the result or the error is discarded and the read
    repeated; an error of an unreplaced file is the file's own and is raised. ``busy(tries)``
    is raised when all ``tries`` reads were overtaken by a save; ``FileNotFoundError`` when the
    file is gone before a read.
    """
    if tries < 1:
        raise ValueError(f"read_unreplaced: tries must be >= 1, got tries={tries!r}.")
    for _ in range(tries):
        before = _identity(path)
        try:
            value = read(path)
        except Exception:
            if _unchanged(path, before):
                raise
            continue
        if _unchanged(path, before):
            return value
    raise busy(tries)


def _unchanged(path: Path, before: tuple[int, ...]) -> bool:
    try:
        return _identity(path) == before
    except FileNotFoundError:
        return False


def _identity(path: Path) -> tuple[int, ...]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns
