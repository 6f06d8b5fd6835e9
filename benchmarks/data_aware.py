r"""Does a data-aware fit or a budgeted rank allocation help on real data? Side by side.

For each task and seed, train a config's MoIL arm with one student (default: the built-in
demo's MoIL arm and its first student, its learning rate the arm's first) once, then score
on val and test, from the *same* trained state:

* ``frobenius``: the student after its final fit (as the run stores it);
* ``data-aware``: the same student refitted by :func:`moil.recipes.data_aware_refit`, Σ read
  from the momentum target's forward on ``--moment-batches`` training batches;
* ``target`` / ``teacher``: the momentum target the student imitates, and the full fine-tune;
* from the momentum target ``W̄`` (``Δ_t = W̄_t − W0_t``), at the stored size of LowRank(``--rank``)
  on every target (budget ``Σ_t r (out_t + in_t)``), biases and heads the target's:

  - ``svd-uniform``: ``W0 + Δ_r``, the truncated SVD (Frobenius Eckart–Young) at rank ``r``;
  - ``svd-allocated``: the same with ranks ``allocate_ranks(spectra(Δ), rank_costs, budget)``;
  - ``svd-whitened-uniform`` / ``-allocated``: ``W0 + (Δ S)_{r_t} S⁺`` with ``S = Σ^{1/2}``
    (the Eckart–Young optimum of ``‖(Δ − D) S‖_F``, :func:`moil.solvers.data_aware.whitening`),
    allocated on the spectra of ``Δ S``.

Per candidate it also reports the weights' summed squared errors to the target,
``Σ_t ‖W̄_t − Ŵ_t‖_F²`` (``frobenius_error``) and ``Σ_t tr((W̄_t − Ŵ_t) Σ_t (W̄_t − Ŵ_t)ᵀ)``
(``sigma_error``, Σ_t of the moment batches), so a reader sees each fit lower the error it
minimises. Allocated ranks are printed as min / median / max.

Usage: ``python benchmarks/data_aware.py [--config benchmarks/pairs/comparison.toml] [--arm moil]
[--student hybrid-k4+als] [--lr 3e-4] [--rank 11] [--seeds 0 1 2] [--tasks nlvr2] [--steps N]
[--json out.json]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import attrs
import torch

from moil.approx import LowRank
from moil.backbones import input_moments
from moil.harness.batches import eval_batches, train_stream
from moil.harness.build import build_backbone, build_recipe, device_of, load_data, run_steps
from moil.harness.cli import builtin_config
from moil.harness.config import load_config
from moil.harness.scoring import METRICS, PRIMARY_METRIC
from moil.recipes import data_aware_refit
from moil.recipes.protocol import head_size
from moil.solvers import allocate_ranks, rank_costs, spectra
from moil.solvers.data_aware import whitening
from moil.train import evaluate, train

SVD_CANDIDATES = ("svd-uniform", "svd-allocated", "svd-whitened-uniform", "svd-whitened-allocated")
CANDIDATES = ("frobenius", "data-aware", *SVD_CANDIDATES, "target", "teacher")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="a moil TOML config (default: the built-in demo config)")
    parser.add_argument("--arm", help="the MoIL arm to train (default: the config's first 'moil' arm)")
    parser.add_argument("--student", help="the arm's student to score (default: its first)")
    parser.add_argument("--lr", type=float, help="teacher learning rate (default: the arm's first for the task)")
    parser.add_argument("--rank", type=int, default=11, help="LowRank rank whose stored size the SVD candidates get")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: the config's train.seeds")
    parser.add_argument("--tasks", nargs="+", help="default: the config's train.tasks")
    parser.add_argument("--steps", type=int, default=0, help="training steps (0: the config's run length)")
    parser.add_argument("--moment-batches", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, default=0, help="images per split (0: the config's)")
    parser.add_argument("--json", help="also write the rows here")
    return parser.parse_args(argv)


def load(args: argparse.Namespace):
    """``(config, arm)``: the config, and its MoIL arm reduced to the one chosen student."""
    config = load_config(args.config) if args.config else builtin_config("demo")
    if args.limit:
        config = attrs.evolve(config, data=attrs.evolve(config.data, limit=args.limit))
    arms = [a for a in config.arms if a.recipe == "moil" and (args.arm is None or a.name == args.arm)]
    if not arms:
        names = [a.name for a in config.arms if a.recipe == "moil"]
        raise SystemExit(f"--arm {args.arm!r}: no such 'moil' arm in the config; its moil arms are {names}.")
    arm = arms[0]
    chosen = [s for s in arm.students if args.student is None or s.name == args.student]
    if not chosen:
        raise SystemExit(f"--student {args.student!r}: arm {arm.name!r} has students {[s.name for s in arm.students]}.")
    # One student: the teacher and its target are those of the whole arm (students never feed back).
    return config, attrs.evolve(arm, students=type(arm.students)(chosen[:1]))


def svd_candidates(base: dict, target: dict, moments: dict, targets, rank: int) -> dict[str, tuple[dict, dict]]:
    """``{name: (weights {"<t>.weight": W0 + D_t}, ranks {t: r_t})}`` for :data:`SVD_CANDIDATES`."""
    f64 = torch.float64
    deltas = {t: target[f"{t}.weight"].to(f64) - base[f"{t}.weight"].to(f64) for t in targets}
    roots = {t: whitening(moments[f"{t}.weight"]) for t in targets}
    whitened = {t: d @ roots[t][0] for t, d in deltas.items()}
    costs = rank_costs({t: tuple(d.shape) for t, d in deltas.items()})
    budget = sum(LowRank(rank).num_params(*d.shape) for d in deltas.values())
    uniform = {t: min(rank, *d.shape) for t, d in deltas.items()}
    out = {}
    for name, work, unwhiten in (("svd", deltas, None), ("svd-whitened", whitened, roots)):
        for kind, ranks in (("uniform", uniform), ("allocated", allocate_ranks(spectra(work), costs, budget))):
            weights = {}
            for t, m in work.items():
                u, s, vh = torch.linalg.svd(m, full_matrices=False)
                r = ranks[t]
                d = (u[:, :r] * s[:r]) @ vh[:r]
                if unwhiten is not None:
                    d = d @ unwhiten[t][1]
                w0 = base[f"{t}.weight"]
                weights[f"{t}.weight"] = (w0.to(f64) + d).to(w0.dtype)
            out[f"{name}-{kind}"] = (weights, dict(ranks))
    return out


def fit_errors(params: dict, target: dict, moments: dict, targets) -> tuple[float, float]:
    """``(Σ_t ‖W̄_t − Ŵ_t‖_F², Σ_t tr((W̄_t − Ŵ_t) Σ_t (W̄_t − Ŵ_t)ᵀ))`` over the target weights."""
    frob = sigma = 0.0
    for t in targets:
        e = target[f"{t}.weight"].double() - params[f"{t}.weight"].double()
        frob += float(e.square().sum())
        sigma += float(((e @ moments[f"{t}.weight"].double()) * e).sum())
    return frob, sigma


def run_one(config, arm, task: str, seed: int, args, data, splits=("val", "test")) -> dict:
    """Train once; the row of every candidate's scores, errors and sizes (see the module)."""
    backbone = build_backbone(config, task, data)
    lr = args.lr if args.lr is not None else arm.learning_rates(task)[0]
    steps = args.steps or run_steps(config, data, task)
    recipe = build_recipe(arm, task, lr, steps)
    device = device_of(config)
    started = time.perf_counter()
    state = train(recipe, backbone, train_stream(data, task, config.data.batch_size, seed, device),
                  steps=steps, seed=seed, precision=config.train.precision)
    train_seconds = time.perf_counter() - started
    fit_on = list(itertools.islice(train_stream(data, task, config.data.batch_size, seed + 1000, device),
                                   args.moment_batches))
    started = time.perf_counter()
    refit = data_aware_refit(recipe, state, backbone, fit_on)
    refit_seconds = time.perf_counter() - started
    (student,) = [s.name for s in arm.students]
    (momentum,) = list(state.targets)
    plain, aware = recipe.candidates(state, backbone), recipe.candidates(refit, backbone)
    target_params = plain[f"target/{momentum}"]
    targets, base = backbone.targets, backbone.base()
    moments = input_moments(backbone, target_params, fit_on)
    sizes = recipe.stored_parameters(state, backbone)
    heads = head_size(backbone)
    params = {"frobenius": plain[f"student/{student}"], "data-aware": aware[f"student/{student}"]}
    stored = {"frobenius": sizes[f"student/{student}"], "data-aware": sizes[f"student/{student}"]}
    ranks = {}
    costs = rank_costs({t: tuple(base[f"{t}.weight"].shape) for t in targets})
    for name, (weights, r) in svd_candidates(base, target_params, moments, targets, args.rank).items():
        params[name] = {**target_params, **weights}
        stored[name] = sum(costs[t] * k for t, k in r.items()) + heads
        ranks[name] = r
    params |= {"target": target_params, "teacher": plain["teacher"]}
    stored |= {"target": sizes[f"target/{momentum}"], "teacher": sizes["teacher"]}
    metric = PRIMARY_METRIC[task]
    batches = {s: eval_batches(data, s, task, config.data.eval_batch_size, device) for s in splits}
    row = {"task": task, "seed": seed, "arm": arm.name, "student": student, "lr": lr, "steps": steps,
           "metric": metric, "rank": args.rank,
           "budget": sum(LowRank(args.rank).num_params(*base[f"{t}.weight"].shape) for t in targets),
           "train_seconds": train_seconds, "refit_seconds": refit_seconds, "candidates": {}}
    for name in CANDIDATES:
        frob, sigma = fit_errors(params[name], target_params, moments, targets)
        scores = {s: evaluate(backbone, params[name], batches[s], {metric: METRICS[task][metric]})[metric]
                  for s in splits}
        entry = {**{s: float(v) for s, v in scores.items()}, "frobenius_error": frob, "sigma_error": sigma,
                 "stored_parameters": int(stored[name])}
        if name in ranks:
            entry["ranks"] = ranks[name]
            entry["low_rank_stored"] = sum(costs[t] * k for t, k in ranks[name].items())
        row["candidates"][name] = entry
    return row


def _spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.4f}"


def table(rows: list[dict]) -> str:
    """One markdown table: per task and split, each candidate's mean ± std and per-seed values."""
    lines = ["| task | split | " + " | ".join(CANDIDATES) + " |", "| --- | --- |" + " --- |" * len(CANDIDATES)]
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        for split in ("val", "test"):
            cells = []
            for name in CANDIDATES:
                v = [r["candidates"][name][split] for r in mine]
                cells.append(f"{_spread(v)} ({', '.join(f'{x:.3f}' for x in v)})")
            lines.append(f"| {task} | {split} | " + " | ".join(cells) + " |")
        for key in ("frobenius_error", "sigma_error"):
            lines.append(f"| {task} | {key} | " + " | ".join(
                f"{statistics.mean(r['candidates'][n][key] for r in mine):.4g}" for n in CANDIDATES) + " |")
        lines.append(f"| {task} | stored | " + " | ".join(
            str(mine[0]["candidates"][n]["stored_parameters"]) for n in CANDIDATES) + " |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config, arm = load(args)
    data = load_data(config)
    rows = []
    for task, seed in itertools.product(args.tasks or config.train.tasks, args.seeds or config.train.seeds):
        row = run_one(config, arm, task, seed, args, data)
        rows.append(row)
        for name in ("svd-allocated", "svd-whitened-allocated"):
            r = sorted(row["candidates"][name]["ranks"].values())
            print(f"{task} seed {seed} {name}: ranks min {r[0]} median {statistics.median(r)} max {r[-1]} "
                  f"({row['candidates'][name]['low_rank_stored']} of budget {row['budget']})", flush=True)
        print(json.dumps({k: v for k, v in row.items() if k != "candidates"}
                         | {n: {k: v for k, v in c.items() if k != "ranks"} for n, c in row["candidates"].items()}),
              flush=True)
    print()
    print(table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
