"""``flush_subnormals``: subnormal results are zero inside the block, and the caller's
mode is back after it, whichever it was."""

from __future__ import annotations

import pytest
import torch

from moil.subnormals import flush_subnormals, flushing

TINY = torch.finfo(torch.float32).tiny


@pytest.fixture
def default_mode():
    yield
    torch.set_flush_denormal(False)


def _product() -> float:
    return float(torch.tensor(1e-30) * torch.tensor(1e-10))


@pytest.mark.parametrize("caller_flushes", [False, True])
def test_flushes_inside_and_restores_the_callers_mode(default_mode, caller_flushes):
    if not torch.set_flush_denormal(caller_flushes) and caller_flushes:
        pytest.skip("this CPU has no flush-to-zero mode")
    assert flushing() is caller_flushes
    with flush_subnormals():
        assert flushing() and _product() == 0.0
    assert flushing() is caller_flushes
    assert (_product() == 0.0) is caller_flushes


def test_mode_is_restored_when_the_block_raises(default_mode):
    with pytest.raises(RuntimeError), flush_subnormals():
        raise RuntimeError("boom")
    assert not flushing() and 0 < _product() < TINY
