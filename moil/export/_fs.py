"""Write an export directory all at once: build it beside the target, then rename."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from moil.checkpoint.files import _fsync_dir, _fsync_file

__all__ = ["publish_dir"]


def publish_dir(
    out_dir: str | os.PathLike,
    write: Callable[[Path], None],
    *,
    overwrite: bool,
    marker: str,
    kind: str,
) -> Path:
    """Run ``write(tmp)`` on a fresh sibling directory, then move it to ``out_dir``.

    ``out_dir`` must be absent or empty; with ``overwrite=True`` it may also be a
    previous export of the same ``kind`` (it contains the file ``marker``), which
    is replaced. Any other non-empty directory is never touched. If ``write``
    raises, nothing is left behind and ``out_dir`` is unchanged.

    Returns:
      ``out_dir`` as a :class:`~pathlib.Path`.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(
            f"{kind}: {str(out_dir)!r} exists and is a file; pass a directory path."
        )
    occupied = out_dir.is_dir() and any(out_dir.iterdir())
    if occupied and not overwrite:
        raise FileExistsError(
            f"{kind}: {str(out_dir)!r} is not empty; pass overwrite=True to replace a previous "
            f"{kind}, or choose an empty or new directory."
        )
    if occupied and not (out_dir / marker).is_file():
        raise FileExistsError(
            f"{kind}: refusing to overwrite {str(out_dir)!r}: it is not empty and holds no "
            f"{marker!r}, so it is not a previous {kind}; choose another directory."
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        for file in tmp.rglob("*"):
            if file.is_file():
                _fsync_file(file)
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out_dir.is_dir():
        if any(out_dir.iterdir()):
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
        else:
            out_dir.rmdir()
    os.replace(tmp, out_dir)
    _fsync_dir(out_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out_dir
