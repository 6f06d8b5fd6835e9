"""Imitation time and memory per rank on 1 and 2 processes (torchrun, gloo on CPU), side by side.

MoIL under ``torchrun`` splits the imitation by target (``moil.distributed.sharding``):
each rank keeps its own targets' momentum copy and students. This script launches
``torchrun --nproc_per_node N`` of itself for each N in ``--worlds`` (default 1 and 2) in
one run; every rank times ``imitation.update`` (the EMA of its targets + one solver
step of every student's part) on the same teacher, and measures the bytes of its
imitation state (momentum targets, students, their AdamW moments) and the peak
resident memory of the timed updates. The teacher's task step is not timed: it is
replicated data parallel, the same work per rank for a fixed per-rank batch.

    python benchmarks/distributed.py [--size tiny|demo|vilt-b32] [--steps 30] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def _bytes(tree) -> int:
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(_bytes(v) for v in tree.values())
    if isinstance(tree, tuple):
        return sum(_bytes(v) for v in tree)
    return 0


def worker(args: argparse.Namespace) -> None:
    """One rank: time the imitation update of its part; rank 0 writes every rank's numbers."""
    from moil.approx import Hybrid
    from moil.distributed import active, gather_parts, init_world
    from moil.recipes import MoIL
    from moil.solvers import Gradient

    torch.set_num_threads(args.threads)
    world = init_world("cpu")
    setup = common.build(args.size, "cpu", seed=0)
    recipe = MoIL(setup.task_loss, {"hy": Hybrid(setup.rank)}, momentum=0.9, solver=Gradient(1)).for_run(10_000)
    base = setup.backbone.base()
    generator = torch.Generator().manual_seed(1)
    teacher = {k: v + 1e-3 * torch.randn(v.shape, generator=generator) for k, v in base.items()}
    with active(world):
        _, imitation = recipe.parts(setup.backbone)
        state = recipe.init(setup.backbone, seed=0).imitation
        state, _ = imitation.update(state, teacher, base)  # warm-up
        times = []
        with common.peak_memory(torch.device("cpu")) as memory:
            for _ in range(args.steps):
                started = time.perf_counter()
                state, _ = imitation.update(state, teacher, base)
                times.append(time.perf_counter() - started)
        row = {
            "world": world.size, "rank": world.rank,
            "targets": sum(1 for k in state.targets["m0"].target if k.endswith(".weight")),
            "seconds_median": statistics.median(times), "seconds_mean": statistics.fmean(times),
            "state_bytes": _bytes(state), "peak_bytes": memory["peak_bytes"],
        }
        rows = gather_parts(row, world, dst=0) if world.size > 1 else [row]
    if world.rank == 0:
        Path(args.out).write_text(json.dumps({"rows": rows, "model": setup.description}))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="demo", choices=common.SIZES)
    p.add_argument("--steps", type=int, default=30, help="timed imitation updates per rank")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per rank")
    p.add_argument("--worlds", default="1,2", help="process counts to run, comma-separated")
    p.add_argument("--json", default=None, help="write every number here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    results, model = [], ""
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(w) for w in args.worlds.split(",")]:
            out = Path(tmp) / f"world{n}.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                   __file__, "--worker", "--out", str(out), "--size", args.size, "--steps", str(args.steps),
                   "--threads", str(args.threads)]
            subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            payload = json.loads(out.read_text())
            results += payload["rows"]
            model = payload["model"]
    one = {r["world"]: r for r in results if r["rank"] == 0}[1] if any(r["world"] == 1 for r in results) else None
    headers = ["processes", "rank", "q/k/v targets", "imitation ms/step", "÷ 1 process", "state MiB", "÷ 1 process",
               "peak MiB"]
    rows = []
    for r in results:
        rows.append([
            r["world"], r["rank"], r["targets"], 1e3 * r["seconds_median"],
            r["seconds_median"] / one["seconds_median"] if one else float("nan"),
            r["state_bytes"] / 2**20, r["state_bytes"] / one["state_bytes"] if one else float("nan"),
            r["peak_bytes"] / 2**20,
        ])
    print(f"model: {model}; student Hybrid, Gradient(1); {args.steps} timed updates per rank, "
          f"{args.threads} thread(s) per rank, gloo on CPU")
    print(common.table(headers, rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": results, "model": model, "machine": common.machine()}, indent=1))


if __name__ == "__main__":
    main()
