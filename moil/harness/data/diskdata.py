"""Data from disk for a run: the configured splits, epochs as pure functions of (seed, epoch), eval batches.

:func:`load_disk_data` reads ``[data] train / val / test`` (:mod:`~moil.harness.data.disk`),
checks the columns each task reads and builds the VQA answer vocabulary from train.
:class:`DiskData` gives what the harness asks of any data (:mod:`moil.harness.batches`):

* :meth:`DiskData.train_stream` — ``step -> batch``: step ``s`` of a run with ``E`` batches
  an epoch is batch ``s mod E`` of epoch ``s // E``, whose row order and ITM negatives are
  :func:`~moil.harness.data.collate.epoch_plan` ``(seed, epoch)``; resuming at any step
  replays nothing and is bitwise exact;
* :meth:`DiskData.eval_batches` — a split in file order, ITM negatives from one fixed draw;
* :meth:`DiskData.steps_per_epoch` — ``E`` (the last partial batch is dropped in training).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from moil.harness.config import ColumnsSpec, Config, ConfigError
from moil.harness.data import collate
from moil.harness.data.disk import check_columns, check_rows, decode_image, read_split
from moil.harness.data.visual_inputs import check_features, feature_tensor, with_boxes

__all__ = ["DiskData", "DiskSplit", "load_disk_data"]

EVAL_SEED = 2024  # the fixed draw of evaluation negatives (as the demo's)


@attrs.frozen
class DiskSplit:
    """One split: its ``datasets.Dataset`` (images undecoded), where it came from, its texts."""

    rows: Any
    path: str
    field: str

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> list:
        return list(self.rows[name])

    def images(self, index: list[int], column: str) -> list:
        cells = self.rows.select(index)[column]
        return [decode_image(cell, f"{self.field} = {self.path!r}") for cell in cells]

    def visuals(self, index: list[int], column: str, features: str | None, boxes: str | None = None) -> list:
        """Decoded images of ``column``, or with ``features`` set that column's ``(T, D)`` tensors
        (with ``boxes``, each row's boxes appended: :func:`~moil.harness.data.visual_inputs.with_boxes`)."""
        if features is None:
            return self.images(index, column)
        where, root = f"{self.field} = {self.path!r}", split_root(self.path)
        rows = self.rows.select(index)
        out = [feature_tensor(cell, where, root) for cell in rows[features]]
        return out if boxes is None else [with_boxes(x, b, where) for x, b in zip(out, rows[boxes], strict=True)]


def split_root(path: str) -> Path:
    """The folder a split's relative paths (``.npy`` feature files) start from: the split's
    folder, or the folder of a ``.jsonl`` / ``.csv`` split file."""
    root = Path(path).expanduser()
    return root if root.is_dir() else root.parent


@attrs.frozen
class DiskData:
    """The splits of a data set on disk, its processor and columns, and the VQA answers."""

    processor: Any
    columns: ColumnsSpec
    splits: Mapping[str, DiskSplit]
    answers: tuple[str, ...] = ()

    def __getitem__(self, split: str) -> DiskSplit:
        if split not in self.splits:
            raise ConfigError(f"data.{split} is not set; give its path in [data], or drop {split!r} from train.eval_splits.")
        return self.splits[split]

    def rows_per_batch(self, task: str, batch_size: int) -> int:
        """Dataset rows one batch reads: half the batch for ITM (each row a positive and a negative)."""
        if task == "itm":
            if batch_size % 2:
                raise ConfigError(f"data.batch_size = {batch_size}: ITM needs an even batch (a positive and a negative per image).")
            return batch_size // 2
        return batch_size

    def steps_per_epoch(self, task: str, batch_size: int) -> int:
        """Full batches in one pass over train."""
        rows, n = self.rows_per_batch(task, batch_size), len(self["train"])
        if n < rows:
            raise ConfigError(
                f"data.train = {self['train'].path!r} has {n} rows, fewer than one batch needs ({rows}); "
                "lower data.batch_size."
            )
        return n // rows

    def _batch(self, split: DiskSplit, task: str, index: list[int], negatives: list[int] | None) -> dict[str, Tensor]:
        c = self.columns
        if task == "nlvr2":
            picked = split.rows.select(index)
            left, right = (split.visuals(index, col, None) for col in c.pair)
            return collate.pair_batch(self.processor, left, right, picked[c.text], picked[c.label])
        images = split.visuals(index, c.image, c.features, c.boxes)
        if task == "itm":
            texts = split.rows.select(index + negatives)[c.text]
            return collate.itm_batch(self.processor, images, texts[:len(index)], texts[len(index):])
        if task == "retrieval":
            return collate.retrieval_batch(self.processor, images, split.rows.select(index)[c.text])
        picked = split.rows.select(index)
        return collate.vqa_batch(self.processor, images, picked[c.question], picked[c.answers], self.answers)

    def train_stream(self, task: str, batch_size: int, seed: int, device: torch.device) -> Callable[[int], dict]:
        """``step -> batch`` over train, epoch ``e`` planned by ``(seed, e)`` (see the module doc)."""
        split = self["train"]
        rows, per_epoch = self.rows_per_batch(task, batch_size), self.steps_per_epoch(task, batch_size)
        texts = split.column(self.columns.text) if task == "itm" else None
        plans: dict[int, tuple] = {}  # a memo of a pure function: the current epoch's plan

        def batch(step: int) -> dict:
            epoch, k = divmod(step, per_epoch)
            if epoch not in plans:
                plans.clear()
                plans[epoch] = collate.epoch_plan(len(split), seed, epoch, texts)
            order, negatives = plans[epoch]
            index = order[k * rows:(k + 1) * rows].tolist()
            neg = None if negatives is None else negatives[index].tolist()
            return _to(self._batch(split, task, index, neg), device)

        return batch

    def eval_batches(self, split: str, task: str, batch_size: int, device: torch.device) -> list[dict]:
        """A split's evaluation batches, in order (ITM: 2 pairs a row, fixed negatives)."""
        part = self[split]
        rows = self.rows_per_batch(task, batch_size)
        negatives = None
        if task == "itm":
            negatives = collate.draw_negatives(part.column(self.columns.text), torch.Generator().manual_seed(EVAL_SEED))
        out = []
        for start in range(0, len(part), rows):
            index = list(range(start, min(start + rows, len(part))))
            neg = None if negatives is None else negatives[index].tolist()
            out.append(_to(self._batch(part, task, index, neg), device))
        return out


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def _needed(task: str, c: ColumnsSpec) -> dict[str, str]:
    if task == "nlvr2":
        if len(c.pair) != 2:
            raise ConfigError(f"[data.columns] pair = {c.pair!r}: NLVR2 reads two image columns, e.g. "
                              "pair = [\"left\", \"right\"] (metadata left_file_name / right_file_name).")
        if c.features is not None:
            raise ConfigError(f"[data.columns] features = {c.features!r}: NLVR2 reads the two images of "
                              "[data.columns] pair (VisualBERT: through the EfficientNet grid); remove features.")
        return {"pair[0]": c.pair[0], "pair[1]": c.pair[1], "text": c.text, "label": c.label}
    if c.boxes is not None and c.features is None:
        raise ConfigError(f"[data.columns] boxes = {c.boxes!r} is read with region features: set "
                          "[data.columns] features = '<your feature column>' too, or remove boxes.")
    image = {"features": c.features} if c.features is not None else {"image": c.image}
    image |= {"boxes": c.boxes} if c.boxes is not None else {}
    if task == "vqa":
        return {**image, "question": c.question, "answers": c.answers}
    return {**image, "text": c.text}


def load_disk_data(config: Config, processor: Any) -> DiskData:
    """The splits ``[data]`` names, checked for every task of ``train.tasks``.

    Raises:
      ConfigError: a split path that does not exist or is no data set; a split the run
        scores (``train.eval_splits``) that is not set; a missing column (named, with the
        columns present and the ``[data.columns]`` field to set).
    """
    d = config.data
    wanted = ["train", *(s for s in config.train.eval_splits if s != "train")]
    splits = {}
    for name in wanted:
        path = getattr(d, name)
        if path is None:
            raise ConfigError(
                f"data.{name} is not set but train.eval_splits lists {name!r}; set data.{name} = 'path' "
                f"or train.eval_splits = {[s for s in config.train.eval_splits if s != name]}."
            )
        images = (d.columns.image, *(d.columns.pair if "nlvr2" in config.train.tasks else ()))
        rows = read_split(path, f"data.{name}", images)
        if d.limit:
            rows = rows.select(range(min(d.limit, len(rows))))
        c = d.columns
        for task in config.train.tasks:
            check_columns(rows, _needed(task, c), path, f"data.{name}")
            files = c.pair if task == "nlvr2" else (() if c.features is not None else (c.image,))
            cells = ({"question": (c.question, "text"), "answers": (c.answers, "answers")} if task == "vqa" else
                     {"text": (c.text, "text")} | ({"label": (c.label, "label")} if task == "nlvr2" else {}))
            check_rows(rows, cells, files, path, f"data.{name}", distinct="text" if task == "itm" else None)
        if c.features is not None and "nlvr2" not in config.train.tasks:
            check_features(rows, c.features, c.boxes, f"data.{name} = {path!r}", split_root(path),
                           getattr(processor, "dim", None))
        splits[name] = DiskSplit(rows, path, f"data.{name}")
    answers = ()
    if "vqa" in config.train.tasks:
        answers = collate.answer_vocab(splits["train"].column(d.columns.answers))
    return DiskData(processor, d.columns, splits, answers)
