"""Inference latency: the merged MoIL student vs the unmerged PEFT LoRA forward vs the base model.

Arms (one forward of the batch under ``torch.inference_mode``, model in eval mode):

* ``base`` — the unmodified model;
* ``merged`` — ``moil.export.merged_copy``: the base architecture with a ``Hybrid(r)``
  student (non-zero parameters) and the heads folded into plain weights;
* ``functional`` — moil's own forward, ``backbone(merged tensors, batch)``
  (``torch.func.functional_call`` over the unmodified model);
* ``peft_unmerged`` — ``peft.get_peft_model`` with LoRA rank ``r_eq`` (same stored size as
  the student, non-zero ``B``) on q/k/v, not merged: each target adds ``B(A x)``.

The merged student is the base architecture, so its latency ratio to ``base`` should
be 1.00 up to noise; the unmerged PEFT forward pays for its extra matmuls.

Usage: ``python benchmarks/inference.py --size demo [--steps N] [--json PATH]``.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common

from moil.approx import Hybrid
from moil.export import merged_copy

ARMS = ("base", "merged", "functional", "peft_unmerged")
DEFAULTS = {"tiny": (10, 7), "demo": (5, 7), "vilt-b32": (2, 5)}


def _perturbed(params: dict, seed: int, scale: float = 0.02) -> dict:
    """Non-zero adapter parameters (a trained-looking student; latency ignores values)."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g).to(v) for k, v in params.items()}


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0], steps_help="timed forwards per arm per round", rounds=True)
    args = common.parse(p, argv)
    setup = common.build(args.size, args.device, args.seed)
    steps, rounds = DEFAULTS[args.size]
    steps, rounds = common.steps_and_rounds(args, steps, rounds)
    bb, batch = setup.backbone, setup.batch
    adapter = bb.adapter(Hybrid(setup.rank))
    student = _perturbed(adapter.init(bb.base(), generator=torch.Generator().manual_seed(0)), 1)
    merged_tensors = {**adapter.merge(student, bb.base()), **bb.head_params()}
    merged = merged_copy(setup.model, merged_tensors).eval()
    lora_rank = common.equal_size_rank(bb, Hybrid(setup.rank))
    peft_model = common.peft_lora(setup, lora_rank, heads=False).eval()
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(
                    0.02 * torch.randn(param.shape, generator=torch.Generator().manual_seed(2))
                )
    inputs = bb.inputs(batch)

    def forward(model):
        def run():
            with torch.inference_mode():
                model(**inputs)

        return run

    def functional():
        with torch.inference_mode():
            bb(merged_tensors, batch)

    arms = {
        "base": forward(setup.model),
        "merged": forward(merged),
        "functional": functional,
        "peft_unmerged": forward(peft_model),
    }
    times = common.interleaved(arms, rounds=rounds, steps=steps, warmup=2, device=setup.device)
    with torch.inference_mode():  # the merged model is the student: same outputs as moil's forward
        gap = float(
            (
                bb.outputs(merged(**inputs), batch)["itm_logits"]
                - bb(merged_tensors, batch)["itm_logits"]
            )
            .abs()
            .max()
        )
    t_base = times["base"]["median"]
    ratios = {f"{n}/base": times[n]["median"] / t_base for n in ARMS if n != "base"}
    min_ratios = {f"{n}/base": times[n]["min"] / times["base"]["min"] for n in ARMS if n != "base"}
    rows = [
        [
            n,
            1e3 * times[n]["median"],
            1e3 * times[n]["min"],
            1e3 * times[n]["max"],
            times[n]["median"] / t_base,
            times[n]["min"] / times["base"]["min"],
        ]
        for n in ARMS
    ]
    print(
        f"inference — {setup.description}; device {setup.device}; merged Hybrid({setup.rank}) vs "
        f"PEFT LoRA r={lora_rank} unmerged; {rounds} rounds × {steps} forwards, "
        "median of per-round means"
    )
    print(
        common.table(
            ["arm", "forward ms (median)", "min", "max", "× base", "× base (of mins)"], rows
        )
    )
    print(f"max |logits(merged model) − logits(moil functional forward)| = {gap:.3g}")
    return common.report(
        args,
        setup,
        {
            "hybrid_rank": setup.rank,
            "lora_rank": lora_rank,
            "steps": steps,
            "rounds": rounds,
            "seconds_per_forward": times,
            "merged_vs_functional_max_abs": gap,
            "ratios": ratios,
            "min_ratios": min_ratios,
        },
    )


if __name__ == "__main__":
    main()
