"""Where a training step's memory goes: the heap in use after every aten op of one step.

Each arm of ``step_cost.py`` runs in a fresh process: one warm-up step, then one step traced by
a ``TorchDispatchMode`` that reads glibc's ``mallinfo2`` (bytes in use, heap + mmapped) after
every op. Printed per arm: the heap held between steps above the loaded model (the arm's
state: trained tensors, optimiser moments, copies), the step's peak above that, and the op at
the peak; then each arm's held and peak heap ÷ the first arm's, and the held difference in
copies of the trained tensors (targets + heads). Unlike ``step_cost``'s ``VmHWM`` (what the OS
gave the process, including the allocator's cached free memory) this counts live bytes only,
so it says which tensors make a difference. CPU and glibc only; ``mallinfo2``'s small-chunk
count covers the main arena, so run it with ``--threads 1`` (torch then allocates on the main
thread). Read after each op, so a transient inside one op is not seen.

Usage: ``python benchmarks/memory_trace.py --size vilt-b32 --precision bf16 [--arms full_ft torch_full_ft]``.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import step_cost
import torch
from torch.utils._python_dispatch import TorchDispatchMode

MARK = "@@TRACE@@"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_in_use() -> int:
    """Bytes glibc has handed out and not had back: small-chunk heap + mmapped chunks."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


class _Trace(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[int, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.log.append((heap_in_use(), str(func)))
        return out


def trace_arm(setup: common.Setup, arm: str) -> dict:
    """In this process: ``arm``'s held heap (after a warm-up step) and its traced step's peak."""
    with torch.inference_mode():
        setup.backbone({}, setup.batch)
    loaded = heap_in_use()
    step = step_cost.make_arm(setup, arm, copy_model=False)
    step()
    held = heap_in_use()
    trace = _Trace()
    with trace:
        step()
    peak, op = max(trace.log)
    return {"held_bytes": held - loaded, "peak_over_held_bytes": peak - held, "peak_op": op, "ops": len(trace.log)}


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0], steps_help="unused", precision=True)
    p.add_argument("--arms", nargs="+", default=["full_ft", "torch_full_ft"], choices=step_cost.ARMS)
    p.add_argument("--trace-arm", default=None, help=common.argparse.SUPPRESS)
    args = common.parse(p, argv)
    setup = common.build(args.size, args.device, args.seed, args.precision)
    if args.trace_arm:  # child process
        print(MARK + json.dumps(trace_arm(setup, args.trace_arm)), flush=True)
        return {}
    arms = {}
    for arm in args.arms:
        done = subprocess.run([sys.executable, os.path.abspath(__file__), *common.child_argv(args), "--trace-arm", arm],
                              capture_output=True, text=True, check=False)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith(MARK)]
        if not lines:
            raise RuntimeError(f"trace of {arm!r} failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
        arms[arm] = json.loads(lines[-1][len(MARK):])
    bb = setup.backbone
    trained = sum(v.numel() * v.element_size() for part in (bb.base(), bb.head_params()) for v in part.values())
    first, mib = arms[args.arms[0]], 2**20
    rows, ratios = [], {}
    for arm, t in arms.items():
        total = t["held_bytes"] + t["peak_over_held_bytes"]
        ratios[f"{arm}/{args.arms[0]} peak"] = total / (first["held_bytes"] + first["peak_over_held_bytes"])
        copies = (t["held_bytes"] - first["held_bytes"]) / trained
        rows.append([arm, t["held_bytes"] / mib, t["peak_over_held_bytes"] / mib, total / mib,
                     ratios[f"{arm}/{args.arms[0]} peak"], copies, t["peak_op"]])
    print(f"memory_trace — {setup.description}; heap in use (mallinfo2) after every op of one step; "
          f"trained tensors {trained / mib:.1f} MiB")
    print(common.table(["arm", "held MiB", "step peak over held", "peak MiB", f"peak × {args.arms[0]}",
                        f"held − {args.arms[0]}'s, in trained copies", "op at peak"], rows))
    return common.report(args, setup, {"arms": arms, "trained_bytes": trained, "ratios": ratios})


if __name__ == "__main__":
    main()
