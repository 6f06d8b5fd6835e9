"""Does the data-aware refit help on real data? Frobenius final fit vs Σ-norm refit, side by side.

For each task and seed, train the demo's MoIL arm (real all-MiniLM-L6-v2 + EfficientNet-Lite0
tokens of real MNIST digits, its learning rate from the lr sweep) once, then score on val and
test, from the *same* trained state:

* the student after its Frobenius final fit (ALS, as the demo stores it);
* the same student refitted by :func:`moil.recipes.data_aware_refit`, Σ read from the
  momentum target's forward on ``--moment-batches`` training batches;
* the momentum target itself (what both imitate).

Usage: ``python benchmarks/data_aware.py [--seeds 0 1 2] [--tasks itm vqa] [--steps 80]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import torch

from moil.harness.batches import train_stream
from moil.harness.build import build_backbone, build_recipe, device_of, load_data
from moil.harness.cli import builtin_config
from moil.harness.scoring import PRIMARY_METRIC, score
from moil.recipes import data_aware_refit
from moil.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=["itm", "vqa"])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--moment-batches", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, default=0, help="images per split (0: the demo's)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = builtin_config("demo")
    if args.limit:
        import attrs

        config = attrs.evolve(config, data=attrs.evolve(config.data, limit=args.limit))
    arm = next(a for a in config.arms if a.recipe == "moil")
    data = load_data(config)
    rows = []
    for task, seed in itertools.product(args.tasks, args.seeds):
        backbone = build_backbone(config, task, data)
        lr = arm.learning_rates(task)[0]
        recipe = build_recipe(arm, task, lr, args.steps)
        stream = train_stream(data, task, config.data.batch_size, seed, device_of(config))
        started = time.perf_counter()
        state = train(recipe, backbone, stream, steps=args.steps, seed=seed)
        fit_on = list(itertools.islice(train_stream(data, task, config.data.batch_size, seed + 1000), args.moment_batches))
        refit_started = time.perf_counter()
        refit = data_aware_refit(recipe, state, backbone, fit_on)
        refit_seconds = time.perf_counter() - refit_started
        metric = PRIMARY_METRIC[task]
        plain = score(recipe, state, backbone, config, data, task, ("val", "test"))
        aware = score(recipe, refit, backbone, config, data, task, ("val", "test"))
        student = next(k for k in plain if k.startswith("student/"))
        row = {"task": task, "seed": seed, "metric": metric, "lr": lr, "refit_seconds": refit_seconds,
               "train_seconds": refit_started - started}
        for split in ("val", "test"):
            row[f"frobenius_{split}"] = plain[student][split][metric]
            row[f"data_aware_{split}"] = aware[student][split][metric]
            row[f"target_{split}"] = plain["target/m0"][split][metric]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| task | split | Frobenius final fit | data-aware refit | Δ (per seed) | momentum target |")
    print("| --- | --- | --- | --- | --- | --- |")
    for task in args.tasks:
        for split in ("val", "test"):
            mine = [r for r in rows if r["task"] == task]
            f = [r[f"frobenius_{split}"] for r in mine]
            d = [r[f"data_aware_{split}"] for r in mine]
            t = [r[f"target_{split}"] for r in mine]
            deltas = ", ".join(f"{b - a:+.4f}" for a, b in zip(f, d))
            spread = lambda v: f"{statistics.mean(v):.4f} ± {statistics.stdev(v) if len(v) > 1 else 0:.4f}"
            print(f"| {task} | {split} | {spread(f)} | {spread(d)} | {deltas} | {spread(t)} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
