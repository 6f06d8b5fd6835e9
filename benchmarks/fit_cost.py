"""Closed-form fit cost: seconds of ``SVDFit`` / ``ALSFit`` on a size's q/k/v targets, and
how close each fit gets (weight distance ÷ the Eckart–Young floor).

The target is synthetic but shaped like a fine-tuning delta. For every q/k/v target
``t`` (``W0_t`` of shape ``(out, in)``, ``k = min(out, in)``):

    W̄_t = W0_t + c_t · U diag(σ) Vᵀ + ε_t · E,     σ_i = 1 / (1 + i / 8),  i = 0 … k−1

with ``U`` ``(out, k)`` and ``V`` ``(in, k)`` random orthonormal (QR of Gaussians),
``c_t`` such that ``‖c_t U diag(σ) Vᵀ‖_F = 0.2 ‖W0_t‖_F`` (a power-law spectrum: the
top 8 directions carry a third of the energy, the tail is long, so neither rank is exact),
and ``E`` Gaussian with ``‖ε_t E‖_F = 0.01 ‖W0_t‖_F`` (dense noise); a bias moves by a
Gaussian of norm ``0.01 ‖W0_t‖_F / √in`` (as much as one column of noise). Seeded by ``--seed``.

Arms (each fits from the adapter's fresh init, i.e. the zero student):

* ``svd_fit`` — ``SVDFit`` on ``LowRank(r_eq)``, ``r_eq`` the rank of equal stored size;
* ``als_fit`` — ``ALSFit()`` (its defaults; ``--als-iterations`` sets ``iterations``) on ``Hybrid(r)``, ``r`` the size's
  ``HYBRID_RANK`` (96 on vilt-b32: 36 targets of 768×768 in 12 q/k/v sharing groups).

Every arm is timed ``--steps`` times: wall-clock median and minimum, and the process's CPU
seconds (``time.process_time``, median) — on a shared machine the wall clock includes the
time other jobs held the core, the CPU time does not. ``distance = sqrt(Σ_t ‖W̄_t −
Ŵ_t‖_F²)`` is divided by the floor ``sqrt(Σ_t Σ_{i>r_eq} s_i(W̄_t − W0_t)²)`` that no
rank-``r_eq`` additive student goes below (``SVDFit`` meets it; an equal-size Hybrid may
go below it). Threads default to 1 (``--threads``): the figure is meant for a shared CPU.

Usage: ``python benchmarks/fit_cost.py --size vilt-b32 [--steps N] [--json PATH]``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import torch

from moil.approx import Hybrid, LowRank
from moil.solvers import ALSFit, SVDFit

DECAY = 8.0  # σ_i = 1 / (1 + i / DECAY)
DELTA, NOISE = 0.2, 0.01  # ‖structured Δ‖ and ‖noise‖ as fractions of ‖W0‖


def _orthonormal(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=g, dtype=torch.float64))
    return q


def make_target(base: dict, seed: int) -> dict:
    """``W̄ = W0 + c·U diag(σ) Vᵀ + ε·E`` per weight, biases shifted (see the module
    docstring). Same dtype as ``base``."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(base):
        w0 = base[key]
        if not key.endswith(".weight"):
            weight = base[key[: -len("bias")] + "weight"].double()
            shift = torch.randn(w0.shape, generator=g, dtype=torch.float64)
            size = NOISE * weight.norm() / weight.shape[1] ** 0.5
            out[key] = (w0.double() + size * shift / shift.norm()).to(w0)
            continue
        rows, cols = w0.shape
        k = min(rows, cols)
        sigma = 1.0 / (1.0 + torch.arange(k, dtype=torch.float64) / DECAY)
        delta = (_orthonormal(rows, k, g) * sigma) @ _orthonormal(cols, k, g).T
        noise = torch.randn(rows, cols, generator=g, dtype=torch.float64)
        size = w0.double().norm()
        delta = DELTA * size * delta / delta.norm() + NOISE * size * noise / noise.norm()
        out[key] = (w0.double() + delta).to(w0)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0], steps_help="timed fits per solver (default 1)")
    p.add_argument("--als-iterations", type=int, default=None, help="ALSFit(iterations=...)")
    p.set_defaults(threads=1)
    args = common.parse(p, argv)
    setup = common.build(args.size, args.device, args.seed)
    bb, r = setup.backbone, setup.rank
    r_eq = common.equal_size_rank(bb, Hybrid(r))
    base = bb.base()
    target = make_target(base, args.seed + 7)
    arms = {
        "svd_fit": (SVDFit(), bb.adapter(LowRank(r_eq))),
        "als_fit": (
            ALSFit() if args.als_iterations is None else ALSFit(iterations=args.als_iterations),
            bb.adapter(Hybrid(r)),
        ),
    }
    seconds, distances, fitted = {}, {}, {}
    for name, (solver, adapter) in arms.items():
        params = adapter.init(base, generator=torch.Generator().manual_seed(args.seed))
        runs, cpu = [], []
        for _ in range(args.steps or 1):
            common.sync(setup.device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fitted[name] = solver.fit(adapter, base, target, params)
            common.sync(setup.device)
            runs.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        seconds[name] = {
            "median": statistics.median(runs), "min": min(runs), "max": max(runs),
            "cpu_median": statistics.median(cpu),
        }
        distances[name] = common.weight_distance(target, adapter.merge(fitted[name], base))

    floor, floor_r = common.ey_floor(base, target, r_eq), common.ey_floor(base, target, r)
    delta = common.weight_distance(target, base)
    ratios = {f"{n}/ey_floor": d / floor for n, d in distances.items()}
    rows = [["zero student (W0)", "-", "-", "-", "-", delta, delta / floor]]
    for name, (solver, adapter) in arms.items():
        s = seconds[name]
        rows.append(
            [f"{name} {solver!r} {adapter.approx!r}", adapter.num_params(base), s["median"],
             s["min"], s["cpu_median"], distances[name], ratios[f"{name}/ey_floor"]]
        )
    print(
        f"fit_cost — {setup.description}; device {setup.device}, {torch.get_num_threads()} "
        f"thread(s); Hybrid({r}) vs LowRank({r_eq}) at equal stored size; {args.steps or 1} "
        f"fit(s) each"
    )
    print(
        f"target W0 + power-law Δ + noise: ‖Δ‖ = {delta:.4g}; Eckart–Young floor at rank "
        f"{r_eq} = {floor:.4g} (at rank {r}: {floor_r:.4g})"
    )
    headers = ["fit", "stored", "s (median)", "s (min)", "CPU s", "distance", "÷ EY floor"]
    print(common.table(headers, rows))
    print(f"load average at the end: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    return common.report(
        args,
        setup,
        {
            "hybrid_rank": r,
            "lora_rank": r_eq,
            "delta_norm": delta,
            "ey_floor": floor,
            "ey_floor_hybrid_rank": floor_r,
            "seconds": seconds,
            "load_average": os.getloadavg()[0],
            "distances": distances,
            "ratios": ratios,
        },
    )


if __name__ == "__main__":
    main()
