"""Where the time of one ``Imitation.update`` goes: a per-op profile and the matmul floor.

Builds the MoIL imitation of ``benchmarks/common.py``'s setup (one ``Hybrid(r)`` student on
every q/k/v, ``Gradient(1)``, ``HalfLife(100)``), a teacher ``W = W0 + σ·noise`` and then:

* ``floor``: the dense products of the closed-form gradient (``W0 U``, ``PᵀΔ``, ``Δ Qᵀ``,
  ``W0ᵀ X`` per target, :mod:`moil.solvers.frobenius_gradient`) timed alone, and their
  GFLOP/s;
* ``update``: CPU ms per ``Imitation.update``; with ``--cold`` a buffer larger than the
  last-level cache is written between calls, as the task step does in training;
* ``--profile``: a ``torch.profiler`` table of one update (CPU, ``record_shapes``), ops
  grouped by name and input shape.

* ``--baseline REV``: the same updates with the solver and optimiser code of git revision
  ``REV`` (``git show``, read-only), interleaved call by call with the working tree's.

Usage: ``python benchmarks/imitation_profile.py --size vilt-b32 --threads 1 [--profile] [--cold]
[--baseline HEAD]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import torch

from moil.approx import Hybrid
from moil.momentum import HalfLife
from moil.recipes import MoIL, default_optimizer


def imitation_of(setup: common.Setup, students: int = 1, sigma: float = 1e-4, steps: int = 3):
    """``(imitation, state, teacher, base)`` for ``students`` ``Hybrid(r)`` students, after
    ``steps`` updates towards a teacher that moves by ``σ·noise`` per step (so the students'
    AdamW moments look like a run's, not zeros)."""
    opt = default_optimizer(total_steps=100_000)
    approx = {f"s{i}": Hybrid(setup.rank) for i in range(students)}
    recipe = MoIL(setup.task_loss, approx, momentum=HalfLife(100), optimizer=opt)
    _, imitation = recipe.parts(setup.backbone)
    base = setup.backbone.base()
    state = recipe.init(setup.backbone, seed=0).imitation
    gen = torch.Generator().manual_seed(0)
    teacher = state.targets["m0"].target
    for _ in range(steps + 1):
        teacher = {k: v + sigma * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in teacher.items()}
        if _ < steps:
            state, _metrics = imitation.update(state, teacher, base)
    return imitation, state, teacher, base


def matmul_floor(setup: common.Setup, repeats: int = 5) -> dict:
    """CPU ms of the closed form's dense products over every target, and GFLOP/s."""
    base = setup.backbone.base()
    shapes = [tuple(base[f"{t}.weight"].shape) for t in setup.backbone.targets]
    r = rt = setup.rank
    gen = torch.Generator().manual_seed(0)
    mats = []
    for out, inn in shapes:
        w0, delta = torch.randn(out, inn, generator=gen), torch.randn(out, inn, generator=gen)
        mats.append((w0, delta, torch.randn(inn, rt, generator=gen), torch.randn(out, r + rt, generator=gen),
                     torch.randn(r + rt, inn, generator=gen), torch.randn(out, rt, generator=gen)))
    flops = sum(2 * o * i * (2 * rt + 2 * (r + rt)) for o, i in shapes)
    times = []
    for _ in range(repeats):
        start = time.process_time()
        for w0, delta, u, pm, qm, x in mats:
            w0 @ u
            pm.T @ delta
            delta @ qm.T
            w0.T @ x
        times.append(time.process_time() - start)
    best = min(times)
    return {"ms": 1e3 * statistics.median(times), "min_ms": 1e3 * best, "gflop": flops / 1e9, "gflops": flops / best / 1e9}


def time_updates(imitation, state, teacher, base, *, calls: int, cold: bool) -> list[float]:
    """CPU seconds per ``imitation.update`` (each from the same ``state``)."""
    junk = torch.empty(400 * 2**20 // 4) if cold else None
    times = []
    for _ in range(calls):
        if junk is not None:
            junk.fill_(1.0)
        start = time.process_time()
        imitation.update(state, teacher, base)
        times.append(time.process_time() - start)
    return times


#: (module, the attributes an arm swaps for the baseline revision's): the code of the
#: imitation step and the optimiser (the EMA, approximations and losses are not swapped).
PATCHED = (
    ("moil.optim", ("AdamW.update",)),
    ("moil.solvers.frobenius_gradient", ()),
    ("moil.solvers.gradient", ("Gradient.update",)),
    ("moil.recipes.imitation", ("Imitation.update", "Imitation.follow", "Follower.follow")),
)


def baseline_patch(rev: str):
    """A context manager running the solver/optimiser code of git revision ``rev``."""
    import importlib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    old: dict[str, types.ModuleType] = {}
    for name, _ in PATCHED:
        path = name.replace(".", "/") + ".py"
        src = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, check=True, capture_output=True, text=True)
        mod = types.ModuleType(f"_baseline_{name}")
        exec(compile(src.stdout, f"{rev}:{path}", "exec"), mod.__dict__)  # noqa: S102 (git show REV)
        old[name] = mod
    # The old gradient solver calls the old closed form.
    for n in ("frobenius_gradient", "closed_form_weights"):
        setattr(old["moil.solvers.gradient"], n, getattr(old["moil.solvers.frobenius_gradient"], n))
    swaps = []
    for name, attrs_ in PATCHED:
        live = importlib.import_module(name)
        for dotted in attrs_:
            cls, attr = dotted.split(".")
            swaps.append((getattr(live, cls), attr, getattr(getattr(old[name], cls), attr)))

    @contextlib.contextmanager
    def patched():
        saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in swaps]
        try:
            for obj, attr, value in swaps:
                setattr(obj, attr, value)
            yield
        finally:
            for obj, attr, value in saved:
                setattr(obj, attr, value)

    return patched


def compare(imitation, state, teacher, base, *, rev: str, calls: int, cold: bool) -> dict:
    """CPU ms per update, baseline ``rev`` and working tree alternating call by call."""
    patched = baseline_patch(rev)
    arms = {"baseline": patched, "worktree": contextlib.nullcontext}
    out = {}
    for name, ctx in arms.items():  # one untimed call each
        with ctx():
            out[name] = imitation.update(state, teacher, base)
    diff = max((a - b).abs().max().item() for n in state.students
               for a, b in zip(out["baseline"][0].students[n].values(), out["worktree"][0].students[n].values()))
    times = {name: [] for name in arms}
    for i in range(calls):
        for name in (list(arms) if i % 2 == 0 else list(arms)[::-1]):
            with arms[name]():
                times[name] += time_updates(imitation, state, teacher, base, calls=1, cold=cold)
    ms = {n: 1e3 * statistics.median(v) for n, v in times.items()}
    paired = statistics.median(w / b for w, b in zip(times["worktree"], times["baseline"]))
    return {"ms": ms, "min_ms": {n: 1e3 * min(v) for n, v in times.items()}, "paired": paired, "max_diff": diff}


def profile(imitation, state, teacher, base, rows: int) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    imitation.update(state, teacher, base)
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        imitation.update(state, teacher, base)
    by_op = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    by_shape = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=rows)
    sums: dict[str, float] = {}
    for e in prof.key_averages():
        kind = next((k for k, ops in CATEGORIES.items() if e.key in ops), "other (incl. Python-side op overhead)")
        sums[kind] = sums.get(kind, 0.0) + e.self_cpu_time_total / 1e3
    total = sum(sums.values())
    lines = [f"{k}: {v:.1f} ms ({100 * v / total:.0f} %)" for k, v in sorted(sums.items(), key=lambda kv: -kv[1])]
    return by_op + "\n" + by_shape + "\nby kind (self CPU, one update):\n  " + "\n  ".join(lines)


#: Op names by kind, for the profile's summary.
CATEGORIES = {
    "matrix products": {"aten::mm", "aten::addmm", "aten::addmm_", "aten::addmv", "aten::addmv_", "aten::mv",
                        "aten::addr", "aten::addr_", "aten::dot", "aten::bmm"},
    "EMA and Δ (lerp, sub)": {"aten::lerp", "aten::sub", "aten::_foreach_lerp"},
    "AdamW (fused kernel, moments' copies, foreach ops)": {
        "aten::_fused_adamw_", "aten::clone", "aten::copy_", "aten::mul", "aten::sqrt", "aten::sqrt_",
        "aten::addcdiv_", "aten::addcmul_", "aten::add_", "aten::clamp_min"},
    "concatenations": {"aten::cat"},
}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="demo", choices=common.SIZES)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--students", type=int, default=1)
    p.add_argument("--warm-steps", type=int, default=3, help="updates before the timed ones")
    p.add_argument("--cold", action="store_true", help="evict the caches between updates")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of one update")
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--baseline", metavar="REV", help="also time git revision REV's solver code, interleaved")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    setup = common.build(args.size)
    floor = matmul_floor(setup)
    print(f"{setup.description}; Hybrid({setup.rank}); products alone: {floor['ms']:.1f} ms "
          f"(min {floor['min_ms']:.1f}), {floor['gflop']:.2f} GFLOP, {floor['gflops']:.1f} GFLOP/s")
    imitation, state, teacher, base = imitation_of(setup, args.students, steps=args.warm_steps)
    times = time_updates(imitation, state, teacher, base, calls=args.calls + 1, cold=args.cold)[1:]
    ms = 1e3 * statistics.median(times)
    print(f"Imitation.update ({args.students} student(s), {'cold' if args.cold else 'warm'} caches): "
          f"{ms:.1f} CPU ms median, {1e3 * min(times):.1f} min over {len(times)} calls")
    result = {"floor": floor, "update_ms": ms}
    if args.baseline:
        c = compare(imitation, state, teacher, base, rev=args.baseline, calls=args.calls, cold=args.cold)
        print(f"baseline {args.baseline}: {c['ms']['baseline']:.1f} ms (min {c['min_ms']['baseline']:.1f}); "
              f"worktree {c['ms']['worktree']:.1f} ms (min {c['min_ms']['worktree']:.1f}); "
              f"worktree ÷ baseline (paired) {c['paired']:.3f}; max |Δθ| after one update {c['max_diff']:.2e}")
        result["compare"] = c
    if args.profile:
        print(profile(imitation, state, teacher, base, args.rows))
    return result


if __name__ == "__main__":
    main()
