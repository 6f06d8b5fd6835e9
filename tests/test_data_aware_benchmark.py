"""``benchmarks/data_aware.py`` on a tiny digit-pairs config: every candidate scores in [0, 1], and the
fits obey the laws the issue states — allocation stays within the uniform budget and never raises the
Frobenius error; the whitened (Σ-norm Eckart–Young) fits never raise the Σ-norm error of the matching
Frobenius fit."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "data_aware.py"

TINY = """
[data]
dataset = "digit-pairs"
limit = 40
batch_size = 8

[model]
family = "tiny"

[train]
steps = 2
seeds = [0]
tasks = ["nlvr2"]
threads = 1

[[arms]]
name = "moil"
recipe = "moil"
lr = [1e-3]
momentum = "half-life:1"   # a target that moved in 2 steps

[[arms.students]]
name = "hybrid-r2"
approx = "hybrid"
rank = 2
refit = "als"
final_fit = true
"""


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("moil_benchmark_data_aware", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = tmp_path_factory.mktemp("data-aware")
    (folder / "tiny.toml").write_text(TINY)
    threads, printed = torch.get_num_threads(), io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            got = module.main(["--config", str(folder / "tiny.toml"), "--rank", "2", "--moment-batches", "2",
                               "--json", str(folder / "rows.json")])
    finally:
        torch.set_num_threads(threads)
    return module, got, json.loads((folder / "rows.json").read_text()), printed.getvalue()


def test_every_candidate_scores_in_unit_interval_and_json_matches(rows):
    module, got, written, printed = rows
    assert len(got) == 1 and written == json.loads(json.dumps(got))
    (row,) = written
    assert set(row["candidates"]) == set(module.CANDIDATES)
    for name, entry in row["candidates"].items():
        for split in ("val", "test"):
            assert 0.0 <= entry[split] <= 1.0, (name, split, entry[split])
    assert "| nlvr2 | test |" in printed and "svd-allocated: ranks min" in printed


def test_allocated_ranks_stay_within_the_uniform_budget(rows):
    _, _, (row,), _ = rows
    uniform = row["candidates"]["svd-uniform"]
    assert uniform["low_rank_stored"] == row["budget"]
    for name in ("svd-allocated", "svd-whitened-allocated"):
        entry = row["candidates"][name]
        assert entry["low_rank_stored"] <= row["budget"]
        assert entry["stored_parameters"] <= uniform["stored_parameters"]
        assert all(r >= 1 for r in entry["ranks"].values())


def test_allocation_lowers_frobenius_and_whitening_lowers_sigma_error(rows):
    """Law: allocation's summed Frobenius error ≤ uniform's at the same budget; the Σ-norm
    Eckart–Young fit's Σ-error ≤ the Frobenius fit's with the same allocation rule."""
    _, _, (row,), _ = rows
    c = row["candidates"]
    slack = lambda x: 1e-6 * abs(x) + 1e-9
    assert c["svd-allocated"]["frobenius_error"] <= c["svd-uniform"]["frobenius_error"] + slack(
        c["svd-uniform"]["frobenius_error"])
    for kind in ("uniform", "allocated"):
        plain, whitened = c[f"svd-{kind}"]["sigma_error"], c[f"svd-whitened-{kind}"]["sigma_error"]
        assert whitened <= plain + slack(plain), kind
    assert c["target"]["frobenius_error"] == 0.0 and c["target"]["sigma_error"] == 0.0
