"""moil.harness.data.cache: round trip, key sensitivity, atomic writes, corrupt files never returned."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

from moil.harness.data.cache import (
    CACHE_ENV,
    CacheWarning,
    CorruptCacheError,
    content_key,
    default_cache_dir,
    load_or_compute,
)


class Counter:
    """A compute function that records how often it ran."""

    def __init__(self, value: torch.Tensor):
        self.value, self.calls = value, 0

    def __call__(self):
        self.calls += 1
        return {"features": self.value.clone()}


@pytest.fixture
def payload():
    return torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5) / 7


def _only_file(folder: Path) -> Path:
    files = list(folder.iterdir())
    assert len(files) == 1, files
    return files[0]


def test_round_trip_computes_once(tmp_path, payload):
    compute = Counter(payload)
    key = content_key({"a": 1}, {"x": torch.ones(3)})
    first = load_or_compute("feat", key, compute, cache_dir=tmp_path)
    second = load_or_compute("feat", key, compute, cache_dir=tmp_path)
    assert compute.calls == 1
    torch.testing.assert_close(first["features"], payload, rtol=0, atol=0)
    torch.testing.assert_close(second["features"], payload, rtol=0, atol=0)
    path = _only_file(tmp_path)
    assert path.name.startswith("feat-") and path.suffix == ".safetensors"


def test_no_temporary_files_left(tmp_path, payload):
    load_or_compute("feat", "k" * 64, Counter(payload), cache_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_failed_compute_leaves_nothing(tmp_path):
    def boom():
        raise RuntimeError("extractor failed")

    with pytest.raises(RuntimeError, match="extractor failed"):
        load_or_compute("feat", "k" * 64, boom, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_content_key_depends_on_bytes_config_shape_and_dtype():
    x = torch.zeros(4, 28, 28, dtype=torch.uint8)
    base = content_key({"res": 112}, {"images": x})
    assert base == content_key({"res": 112}, {"images": x.clone()})
    y = x.clone()
    y[3, 27, 27] = 1
    assert content_key({"res": 112}, {"images": y}) != base
    assert content_key({"res": 96}, {"images": x}) != base
    assert content_key({"res": 112}, {"images": x.reshape(2, 56, 28)}) != base
    assert content_key({"res": 112}, {"images": x.to(torch.int16)}) != base


def test_default_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert default_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv(CACHE_ENV)
    assert default_cache_dir() == Path.home() / ".cache" / "moil"


def test_env_var_selects_folder(monkeypatch, tmp_path, payload):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    load_or_compute("feat", "e" * 64, Counter(payload))
    assert _only_file(tmp_path / "env").suffix == ".safetensors"


def _corrupt_truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_flip_data_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # inside the tensor bytes: the file still parses
    path.write_bytes(bytes(data))


def _corrupt_garbage(path: Path) -> None:
    path.write_bytes(b"\x00" * 5)


@pytest.mark.parametrize(
    "corrupt, reason",
    [(_corrupt_truncate, "cannot be read"), (_corrupt_flip_data_byte, "checksum"),
     (_corrupt_garbage, "cannot be read")],
)  # fmt: skip
def test_corrupt_file_is_recomputed_with_warning(tmp_path, payload, corrupt, reason):
    compute = Counter(payload)
    key = "c" * 64
    load_or_compute("feat", key, compute, cache_dir=tmp_path)
    corrupt(_only_file(tmp_path))
    with pytest.warns(CacheWarning, match=reason):
        again = load_or_compute("feat", key, compute, cache_dir=tmp_path)
    assert compute.calls == 2
    torch.testing.assert_close(again["features"], payload, rtol=0, atol=0)
    # the entry was rewritten and is healthy again: no warning, no compute
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        third = load_or_compute("feat", key, compute, cache_dir=tmp_path)
    assert compute.calls == 2
    torch.testing.assert_close(third["features"], payload, rtol=0, atol=0)


def test_corrupt_file_can_raise(tmp_path, payload):
    load_or_compute("feat", "r" * 64, Counter(payload), cache_dir=tmp_path)
    _corrupt_flip_data_byte(_only_file(tmp_path))
    with pytest.raises(CorruptCacheError, match="checksum.*Delete the file"):
        load_or_compute("feat", "r" * 64, Counter(payload), cache_dir=tmp_path, on_corrupt="raise")


def test_entry_for_another_key_is_not_returned(tmp_path, payload):
    """A file whose name prefix matches but whose stored key differs is never trusted."""
    load_or_compute("feat", "a" * 64, Counter(payload), cache_dir=tmp_path)
    other_key = "a" * 20 + "b" * 44  # same 20-char file-name prefix, different key
    fresh = Counter(payload * 2)
    with pytest.warns(CacheWarning, match="written for key"):
        out = load_or_compute("feat", other_key, fresh, cache_dir=tmp_path)
    assert fresh.calls == 1
    torch.testing.assert_close(out["features"], payload * 2, rtol=0, atol=0)


def test_bad_on_corrupt_value(tmp_path, payload):
    with pytest.raises(ValueError, match="on_corrupt='ignore'"):
        load_or_compute("feat", "x" * 64, Counter(payload), cache_dir=tmp_path, on_corrupt="ignore")


def test_an_entry_rewritten_during_every_read_says_so(tmp_path, payload, monkeypatch):
    """A cache file that another worker replaces during each of the reads is reported as
    rewritten, with the number of reads tried, not as corrupt."""
    import time

    from moil.harness.data import cache

    key = "w" * 64
    load_or_compute("feat", key, Counter(payload), cache_dir=tmp_path)
    path, real = _only_file(tmp_path), cache._read_verified

    def overtaken(p, k):
        out = real(p, k)
        time.sleep(0.002)  # a distinct mtime
        fresh = p.with_suffix(".new")
        fresh.write_bytes(p.read_bytes())
        os.replace(fresh, p)  # a new inode, as a concurrent atomic save gives
        return out

    monkeypatch.setattr(cache, "_read_verified", overtaken)
    with pytest.raises(CorruptCacheError, match="rewritten by another process during each of 5 reads"):
        load_or_compute("feat", key, Counter(payload), cache_dir=tmp_path, on_corrupt="raise")
    assert path.is_file()
