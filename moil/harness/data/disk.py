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

__all__ = ["check_columns", "decode_image", "read_split"]

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
        ds = datasets.load_from_disk(str(p))
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
        ds = datasets.load_dataset("imagefolder", data_dir=str(p), split="train", drop_labels=True)
    elif p.suffix in (".jsonl", ".json", ".csv"):
        ds = datasets.load_dataset("csv" if p.suffix == ".csv" else "json", data_files=str(p), split="train")
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
    return ds


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
    return image.convert("RGB")
