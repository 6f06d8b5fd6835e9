"""A grid of runs (tasks × arms × seeds, with per-arm learning-rate sweeps) and its summary.

``run_grid(config, out)`` writes ``out/config.toml`` (resolved), one folder per run
under ``out/runs/<task>/<arm>/seed<k>/`` (and ``out/sweep/…`` for sweeps),
``out/results.json`` and, via :mod:`moil.report`, ``out/report.md`` and PNG plots.
Finished runs are reused on ``resume``; an interrupted one continues from its
checkpoint.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from moil.config import Config, config_dict, dump_config
from moil.experiment import PRIMARY_METRIC, build_backbone, load_data, run_one

__all__ = ["run_grid", "summarize", "Reporter"]

#: ``start(label, total_steps) -> on_step(step, metrics)``; the CLI draws progress bars.
Reporter = Callable[[str, int], Callable[[int, dict], None]]


def _quiet(label: str, total: int) -> Callable[[int, dict], None]:
    return lambda step, metrics: None


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def _cached(run_dir: Path, resume: bool, run: Callable[[bool], dict]) -> dict:
    done = run_dir / "results.json"
    result = json.loads(done.read_text()) if resume and done.exists() else run(resume)
    # Where its metrics.jsonl lives, relative to the grid folder (for the plots).
    return {**result, "folder": str(Path(*run_dir.parts[-4:]))}


def run_grid(config: Config, out: str | Path, *, reporter: Reporter = _quiet, resume: bool = False) -> dict:
    """Run every task × arm × seed of ``config``; return (and write) the results."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(dump_config(config))
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    started = time.perf_counter()
    data = load_data(config)
    runs, sweeps = [], []
    for task in config.train.tasks:
        backbone = build_backbone(config, task, data)
        for arm in config.arms:
            lrs = arm.lr if isinstance(arm.lr, list) else [arm.lr]
            lr, reuse = lrs[0], {}
            if len(lrs) > 1:
                seed, steps = config.train.seeds[0], config.train.sweep_steps or config.train.steps
                # A full-length sweep run of the first seed *is* that seed's run at the
                # chosen lr: it is also scored on test (never used for the choice) and reused.
                splits = ("val", "test") if steps == config.train.steps else ("val",)
                scores, by_lr = [], {}
                for candidate in lrs:
                    folder = out / "sweep" / task / arm.name / f"lr{candidate:g}"
                    result = _cached(folder, resume, lambda r: run_one(
                        config, arm, task, seed, candidate, backbone, data, folder, steps=steps,
                        splits=splits, resume=r,
                        on_step=reporter(f"{task} · {arm.name} · sweep lr={candidate:g}", steps)))
                    score = result["candidates"][result["primary"]]["val"][PRIMARY_METRIC[task]]
                    scores.append({"lr": candidate, "val": score})
                    by_lr[candidate] = result
                lr = max(scores, key=lambda s: s["val"])["lr"]
                sweeps.append({"task": task, "arm": arm.name, "scores": scores, "chosen": lr})
                if "test" in splits:
                    reuse[seed] = by_lr[lr]
            for seed in config.train.seeds:
                if seed in reuse:
                    runs.append(reuse[seed])
                    continue
                folder = out / "runs" / task / arm.name / f"seed{seed}"
                runs.append(_cached(folder, resume, lambda r: run_one(
                    config, arm, task, seed, lr, backbone, data, folder, resume=r,
                    on_step=reporter(f"{task} · {arm.name} · seed {seed} · lr={lr:g}", config.train.steps))))
    results = {
        "config": config_dict(config),
        "machine": machine(),
        "wall_seconds": time.perf_counter() - started,
        "sweeps": sweeps,
        "runs": runs,
        "summary": summarize(runs),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    from moil.report import write_report

    write_report(results, out)
    return results


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (task, arm, candidate): mean ± sample std over seeds of the test
    (and val) primary metric, stored size, time and memory."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        for candidate in run["candidates"]:
            groups.setdefault((run["task"], run["arm"], candidate), []).append(run)
    rows = []
    for (task, arm, candidate), members in groups.items():
        metric = members[0]["metric"]

        def values(split: str) -> list[float]:
            return [m["candidates"][candidate][split][metric] for m in members if split in m["candidates"][candidate]]

        test, val = values("test"), values("val")
        stored = members[0]["candidates"][candidate]["stored_parameters"]
        rows.append({
            "task": task, "arm": arm, "candidate": candidate, "metric": metric,
            "primary": candidate == members[0]["primary"],
            "test_mean": statistics.fmean(test) if test else None,
            "test_std": statistics.stdev(test) if len(test) > 1 else 0.0,
            "val_mean": statistics.fmean(val) if val else None,
            "seeds": len(members), "lr": members[0]["lr"],
            "stored_parameters": stored,
            "percent_of_model": 100.0 * stored / members[0]["model_parameters"],
            "train_seconds": statistics.fmean(m["train_seconds"] for m in members),
            "peak_memory_mib": statistics.fmean(m["peak_memory_mib"] for m in members),
        })
    return rows
