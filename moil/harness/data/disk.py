"""Reading a data split from disk with Hugging Face ``datasets``, in the conventions people use.

A split path (``[data] train / val / test``) is one of:

* a ``Dataset.save_to_disk`` folder (``datasets.load_from_disk``);
* an image folder with ``metadata.jsonl`` or ``metadata.csv`` (the ``datasets``
  "imagefolder" convention: a ``file_name`` column naming each image, relative to
  the folder, plus ``text`` or ``question``/``answers``); the images become the
  ``image`` column; NLVR2 pairs name two files, ``left_file_name``/``right_file_name``
  (columns ``left``/``right``), plus ``text`` and ``label``;
* a ``.jsonl`` / ``.csv`` file whose image column holds paths (relative to the file).

Images are read undecoded and decoded one by one (:func:`decode_image`), so a file
that fails to decode is named. ``datasets`` is an optional extra:
``pip install 'moil[data]'``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from moil.harness.config import ConfigError
from moil.harness.data.collate import is_answer, pair_label

__all__ = ["check_columns", "check_rows", "decode_image", "read_split"]

_INSTALL = "pip install 'moil[data]'  (or: pip install datasets)"


def _datasets():
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"reading [data] train/val/test from disk needs Hugging Face datasets: {_INSTALL}") from None
    return datasets


def read_split(path: str, field: str, image_column: str | Sequence[str]) -> Any:
    """The ``datasets.Dataset`` at ``path``, its image columns left undecoded.

    Args:
      path: a split path (see the module doc).
      field: the config field it came from (``"data.train"``), for messages.
      image_column: the image column's name (``[data.columns] image``), or several (NLVR2's
        ``pair``; an imagefolder's ``left_file_name`` becomes the image column ``left``).

    Raises:
      ConfigError: no such path; a folder that is neither a saved dataset nor an image
        folder; a saved ``DatasetDict`` (name one of its splits).
    """
    datasets = _datasets()
    columns = (image_column,) if isinstance(image_column, str) else tuple(image_column)
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{field} = {path!r}: no such file or folder (from {Path.cwd()}).")
    if p.is_dir() and ((p / "state.json").exists() or (p / "dataset_dict.json").exists()):
        ds = _loaded(lambda: datasets.load_from_disk(str(p)), p, field, path)
        if isinstance(ds, datasets.DatasetDict):
            raise ConfigError(
                f"{field} = {path!r} is a DatasetDict with splits {sorted(ds)}; point {field} at one "
                f"of them, e.g. {field} = {str(p / next(iter(ds)))!r}."
            )
    elif p.is_dir():
        meta = [m for m in ("metadata.jsonl", "metadata.csv") if (p / m).exists()]
        if not meta:
            raise ConfigError(
                f"{field} = {path!r} is neither a save_to_disk folder nor an image folder: it has no "
                "metadata.jsonl or metadata.csv (one row per image: file_name plus your columns)."
            )
        _not_empty(p / meta[0], field, path)
        ds = _loaded(lambda: datasets.load_dataset("imagefolder", data_dir=str(p), split="train", drop_labels=True),
                     p / meta[0], field, path)
    elif p.suffix in (".jsonl", ".json", ".csv"):
        _not_empty(p, field, path)
        ds = _loaded(lambda: datasets.load_dataset("csv" if p.suffix == ".csv" else "json", data_files=str(p),
                                                   split="train"), p, field, path)
        for column in columns:
            if column in ds.column_names:
                ds = ds.map(lambda row, c=column: {c: str((p.parent / row[c]).resolve())})
                ds = ds.cast_column(column, datasets.Image(decode=False))
    else:
        raise ConfigError(
            f"{field} = {path!r}: use a save_to_disk folder, an image folder with metadata.jsonl / "
            "metadata.csv, or a .jsonl / .csv file of image paths."
        )
    for column in columns:
        if column in ds.column_names and isinstance(ds.features[column], datasets.Image):
            ds = ds.cast_column(column, datasets.Image(decode=False))
    if len(ds) == 0:
        raise ConfigError(f"{field} = {path!r} holds no rows; give it at least one batch of examples.")
    return ds


def _not_empty(file: Path, field: str, path: str) -> None:
    """Refuse a file of no bytes or only blank lines, reading up to its first non-blank line."""
    with file.open("rb") as f:
        blank = all(not line.strip() for line in f)  # stops at the first non-blank line
    if blank:
        raise ConfigError(f"{field} = {path!r}: {file} is empty; write one row per example "
                          "(file_name plus your columns) into it.")


def _loaded(load: Any, file: Path, field: str, path: str) -> Any:
    """``load()``, with what ``datasets``/``pyarrow`` raise for a torn or non-UTF-8 file turned into a
    ConfigError naming ``file`` and the deepest cause (``JSON parse error ... in row 31``); any other
    error (a full disk, no permission, a dataset saved by a newer ``datasets``) propagates as it is."""
    import json

    import pyarrow as pa
    from datasets.exceptions import DatasetGenerationError

    try:
        return load()
    except (DatasetGenerationError, pa.ArrowInvalid, UnicodeDecodeError, json.JSONDecodeError) as err:
        cause, seen = err, {id(err)}
        while (nxt := cause.__cause__ or cause.__context__) is not None and id(nxt) not in seen:
            cause = nxt
            seen.add(id(cause))
        raise ConfigError(
            f"{field} = {path!r}: cannot read {file} ({type(cause).__name__}: {cause}); it must be UTF-8 "
            "with one complete row per line (JSON lines) or a header and rows (CSV) — fix or remove the bad row."
        ) from err


def check_columns(ds: Any, needed: Mapping[str, str], path: str, field: str) -> None:
    """Refuse a split that lacks a column the task reads.

    Args:
      ds: the split.
      needed: ``{config name: column}``, e.g. ``{"image": "image", "text": "caption"}``.
      path: the split's path; field: its config field, both for the message.
    """
    for role, column in needed.items():
        if column not in ds.column_names:
            raise ConfigError(
                f"{field} = {path!r} has no column {column!r} (the {role}); its columns are "
                f"{ds.column_names}. Rename the column, or set [data.columns] {role} = '<your column>'."
            )


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_answers(value: Any) -> bool:
    return is_answer(value) or (isinstance(value, list) and bool(value) and all(map(is_answer, value)))


def _is_label(value: Any) -> bool:
    return pair_label(value) is not None


#: Cell kind → (the check, what a cell must hold).
CELLS = {"text": (_is_text, "non-empty strings"),
         "answers": (_is_answers, "an answer string or a non-empty list of answer strings"),
         "label": (_is_label, "true / false (or 1 / 0)")}


def check_rows(ds: Any, cells: Mapping[str, tuple[str, str]], images: Sequence[str], path: str, field: str, *,
               distinct: str | None = None) -> None:
    """Refuse rows a batch could not be made of, before any training: a cell that is not what its
    column holds (:data:`CELLS`: a caption that is ``None`` or a number, an NLVR2 label ``"maybe"``),
    an image file that does not exist or is no image, and — ``distinct`` naming the caption role of
    ITM — a split with fewer than two different captions (its negatives are other rows' captions).

    Args:
      ds: the split; cells: ``{config name: (column, kind)}`` (``{"text": ("caption", "text")}``);
      images: image columns whose cells name files; path, field: the split, for the message.
    """
    for role, (column, kind) in cells.items():
        ok, holds = CELLS[kind]
        values = ds[column]
        for i, value in enumerate(values):
            if not ok(value):
                raise ConfigError(
                    f"{field} = {path!r}: row {i} has {column} = {value!r} ({type(value).__name__}); the "
                    f"{role} column ([data.columns] {role}) holds {holds} — fix or remove that row."
                )
        if role == distinct and len(set(values)) < 2:
            raise ConfigError(
                f"{field} = {path!r}: every row has the same {column} {values[0]!r}; image-text matching takes "
                "its negatives from other rows' captions, so it needs at least two different ones."
            )
    from PIL import Image

    for column in images:
        files = [p for chunk in ds.with_format("arrow")[column].chunks for p in _files(chunk)]
        if missing := [p for p in files if not Path(p).is_file()]:
            raise ConfigError(
                f"{field} = {path!r}: {len(missing)} image file(s) of column {column!r} do not exist, e.g. "
                f"{missing[0]!r}; restore them, or remove their rows."
            )
        for file in files:  # the header only (no pixels decoded): a file that is no image is named now
            try:
                with Image.open(file) as image:
                    if image.mode in ("I", "F"):
                        _rgb(image, file, f"{field} = {path!r}")  # refused: pixels of no known range
            except ConfigError:
                raise
            except (OSError, ValueError) as err:
                raise ConfigError(f"{field} = {path!r}: image {file!r} failed to decode ({err}); fix or remove "
                                  "that row.") from None


def _files(chunk: Any) -> list[str]:
    """The file paths of an image column's arrow chunk: a ``datasets.Image`` struct's ``path``
    where it holds no ``bytes``, or the cells of a column of path strings (a saved dataset)."""
    import pyarrow as pa

    if pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type):
        return [p for p in chunk.to_pylist() if p is not None]
    no_bytes = chunk.field("bytes").is_null().to_pylist()
    return [p for p, b in zip(chunk.field("path").to_pylist(), no_bytes) if b and p is not None]


def decode_image(value: Any, path: str) -> Any:
    """An RGB ``PIL.Image`` from a ``datasets`` image cell ``{"bytes", "path"}`` (or a PIL image).

    Raises:
      ConfigError: the image does not decode; the message names its file.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    name = value.get("path") if isinstance(value, dict) else value
    try:
        if isinstance(value, dict) and value.get("bytes") is not None:
            image = Image.open(io.BytesIO(value["bytes"]))
        else:
            image = Image.open(name)
        image.load()
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ConfigError(f"{path}: image {name!r} failed to decode ({err}); fix or remove that row.") from None
    return _rgb(image, name, path)


def _rgb(image: Any, name: Any, path: str) -> Any:
    """``image`` as 8-bit RGB. 16-bit grey (``I;16``) is scaled by 255 / 65535 — PIL's own
    ``convert`` would clip every value above 255 to white; 32-bit integer (``I``) and float
    (``F``) pixels have no known range and are refused."""
    import numpy as np
    from PIL import Image

    if image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.rint(values * (255 / 65535)).astype(np.uint8), "L")
    elif image.mode in ("I", "F"):
        raise ConfigError(f"{path}: image {name!r} has 32-bit {'integer' if image.mode == 'I' else 'float'} pixels "
                          f"(mode {image.mode!r}), whose range is not known; save it as 8-bit or 16-bit (PNG), "
                          "or remove that row.")
    return image.convert("RGB")
