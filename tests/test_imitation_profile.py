"""``benchmarks/imitation_profile.py`` runs at tiny size: the matmul floor, the update's CPU
time, the per-op profile and the side-by-side run against a git revision's code."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _has_head() -> bool:
    if shutil.which("git") is None:
        return False
    done = subprocess.run(["git", "cat-file", "-e", "HEAD:moil/optim.py"], check=False, cwd=ROOT, capture_output=True)
    return done.returncode == 0


def test_profile_and_baseline_at_tiny_size():
    spec = importlib.util.spec_from_file_location("moil_benchmark_imitation_profile", ROOT / "benchmarks" / "imitation_profile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--size", "tiny", "--calls", "2", "--profile", "--rows", "3", "--threads", "1"]
    if _has_head():
        argv += ["--baseline", "HEAD"]
    threads, printed = torch.get_num_threads(), io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            result = module.main(argv)
    finally:
        torch.set_num_threads(threads)
    assert result["floor"]["gflops"] > 0 and result["update_ms"] > 0
    assert "matrix products" in printed.getvalue() and "aten::mm" in printed.getvalue()
    if "compare" not in result:
        pytest.skip("no git checkout: the baseline run was not tried")
    c = result["compare"]
    assert all(math.isfinite(v) and v > 0 for v in c["ms"].values()) and c["paired"] > 0
    # The revision's code and the working tree's follow the same target to float rounding.
    assert c["max_diff"] < 1e-5
