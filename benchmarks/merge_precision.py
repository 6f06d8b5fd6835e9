"""LoRA's merge ``Ŵ = W0 + s·B A`` and its backward under mixed precision: in fp32, or in the
forward's autocast dtype (``moil.precision.forward_precision``, what ``moil.recipes.LoRA``
does under ``precision = "bf16"``).

Two arms over every target of the size's model with ``LowRank(r_eq)`` (the LoRA of
``step_cost.py``), timed side by side round-robin in one process (``common.interleaved``):

* ``fp32`` — the merge in fp32, then the cast to the forward's dtype that autocast would do
  at the layer's first matmul;
* ``forward`` — the merge under the forward's autocast: one low-precision ``addmm`` per
  target (fp32 accumulation), no separate cast.

Each call merges every target and back-propagates a fixed bf16 gradient of ``Ŵ`` into ``A``
and ``B`` (the layer's own ``x^T dy`` is not part of either arm). Printed: ms per call and
``forward ÷ fp32``; also the largest elementwise difference of the two merges in units of
``2^-8·(|W0| + s|B||A| + |Ŵ|)``, the bound ``tests/test_train.py`` holds it to.

Usage: ``python benchmarks/merge_precision.py --size vilt-b32 --threads 1 [--rounds N]``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import torch

from moil.approx import Adapter, Hybrid, LowRank
from moil.precision import Autocast, forward_precision

DEFAULTS = {"tiny": (5, 5), "demo": (5, 7), "vilt-b32": (2, 9), "vilt-l": (1, 5)}


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0], steps_help="timed calls per arm per round", rounds=True)
    p.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16", help="the forward's autocast dtype")
    args = common.parse(p, argv)
    setup = common.build(args.size, args.device, args.seed)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    steps, rounds = common.steps_and_rounds(args, *DEFAULTS[args.size])
    base = setup.backbone.base()
    rank = common.equal_size_rank(setup.backbone, Hybrid(setup.rank))
    adapter = Adapter(LowRank(rank), tuple(setup.backbone.targets))
    scale = adapter.approx.scale
    g = torch.Generator().manual_seed(args.seed)
    params = {k: (0.02 * torch.randn(v.shape, generator=g)).to(setup.device) for k, v in adapter.init(base).items()}
    params = {k: v.requires_grad_(True) for k, v in params.items()}
    grads = {k: torch.randn(base[k].shape, generator=g).to(setup.device, dtype) for k in base if k.endswith(".weight")}
    autocast = Autocast(setup.backbone, dtype)

    def merged(in_forward: bool) -> dict:
        if in_forward:
            with forward_precision(autocast, base):
                return adapter.merge(params, base)
        return {k: v.to(dtype) for k, v in adapter.merge(params, base).items()}

    def arm(in_forward: bool):
        def call() -> None:
            out = merged(in_forward)
            torch.autograd.backward([out[k] for k in grads], [grads[k] for k in grads])
            for v in params.values():
                v.grad = None

        return call

    times = common.interleaved(
        {"fp32": arm(False), "forward": arm(True)}, rounds=rounds, steps=steps, warmup=1, device=setup.device
    )
    with torch.no_grad():
        exact, low, views = adapter.merge(params, base), merged(True), adapter.views(params)
        worst = 0.0
        for k in grads:
            p = views[k.removesuffix(".weight")]
            bound = 2.0**-8 * (base[k].abs() + scale * p["lora_b"].abs() @ p["lora_a"].abs() + exact[k].abs())
            worst = max(worst, float(((low[k].float() - exact[k]).abs() / bound).max()))
    ratios = {
        "forward/fp32": times["forward"]["median"] / times["fp32"]["median"],
        "forward/fp32 (paired)": common.paired_ratio(times, "forward", "fp32"),
        "forward/fp32 (cpu, paired)": common.paired_ratio(times, "forward", "fp32", cpu=True),
    }
    print(
        f"merge_precision — {setup.description}; {len(grads)} targets, LowRank({rank}), merge + backward "
        f"under {args.dtype}; {rounds} rounds × {steps} calls, median of per-round means"
    )
    rows = [[n, 1e3 * t["median"], 1e3 * t["min"], 1e3 * t["max"]] for n, t in times.items()]
    print(common.table(["arm", "ms (median)", "min", "max"], rows))
    print(", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    print(f"largest difference of the two merges: {worst:.3f} of the bound")
    return common.report(
        args,
        setup,
        {"dtype": args.dtype, "lora_rank": rank, "steps": steps, "rounds": rounds, "seconds_per_call": times,
         "ratios": ratios, "worst_over_bound": worst},
    )


if __name__ == "__main__":
    main()
