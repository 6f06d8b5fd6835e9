"""Training-step time and peak memory: MoIL vs full fine-tuning vs LoRA (moil) vs PEFT LoRA.

Arms, all on the same model, targets (every q/k/v) and batch, training the ITM head too:

* ``moil`` — ``MoIL`` with one ``Hybrid(r)`` student, reference ``Gradient(1)`` solver:
  teacher forward/backward + EMA target update + one imitation step of the student;
* ``moil_fit_only`` — the same student with ``solver=FitOnly()`` and an ``ALSFit`` final
  fit: no imitation work per step beyond the EMA (the fit, once at the end, is not timed
  here; ``benchmarks/fit_cost.py`` times it);
* ``full_ft`` — ``FullFineTune``: the teacher alone (dense q/k/v + heads);
* ``lora`` — moil's ``LoRA`` recipe with ``LowRank(r_eq)``, ``r_eq`` chosen so that it
  stores as many parameters as the Hybrid student;
* ``peft_lora`` — ``peft.get_peft_model`` (rank ``r_eq``, heads as ``modules_to_save``)
  trained by a plain ``loss.backward(); torch.optim.AdamW.step()`` loop;
* ``torch_full_ft`` — a reference outside the brief's four: the same full fine-tuning of
  q/k/v + heads as ``full_ft`` but in that plain PyTorch loop (``requires_grad`` on the
  targets and heads only). It separates "moil vs PEFT" from "``torch.func.grad`` vs
  ``loss.backward()``": moil's recipes take the task gradient with ``torch.func.grad``.

Time: all four arms live in one process and are timed round-robin (see
``common.interleaved``). Peak memory: each arm runs in a fresh subprocess; the number is
its peak above the process's memory with the model and batch loaded (PEFT is applied in
place there, as users do — no model copy).

Usage: ``python benchmarks/step_cost.py --size demo [--device cpu] [--steps N] [--json PATH]``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common

from moil.approx import Hybrid, LowRank
from moil.momentum import HalfLife
from moil.recipes import FullFineTune, LoRA, MoIL, Student, default_optimizer
from moil.solvers import ALSFit, FitOnly

ARMS = ("moil", "moil_fit_only", "full_ft", "lora", "peft_lora", "torch_full_ft")
#: (timed steps per arm per round, rounds) per size.
DEFAULTS = {"tiny": (5, 5), "demo": (3, 5), "vilt-b32": (1, 3)}


def make_arm(setup: common.Setup, name: str, *, copy_model: bool = True):
    """A zero-argument callable doing one training step of arm ``name``."""
    opt = default_optimizer(total_steps=100_000)
    lora_rank = common.equal_size_rank(setup.backbone, Hybrid(setup.rank))
    if name == "moil":
        recipe = MoIL(setup.task_loss, Hybrid(setup.rank), momentum=HalfLife(100), optimizer=opt)
    elif name == "moil_fit_only":
        student = Student(Hybrid(setup.rank), solver=FitOnly(), refit=ALSFit(), final_fit=True)
        recipe = MoIL(setup.task_loss, student, momentum=HalfLife(100), optimizer=opt)
    elif name == "full_ft":
        recipe = FullFineTune(setup.task_loss, optimizer=opt)
    elif name == "lora":
        recipe = LoRA(setup.task_loss, LowRank(lora_rank), optimizer=opt)
    elif name == "peft_lora":
        return common.torch_train_step(
            setup, common.peft_lora(setup, lora_rank, copy_model=copy_model)
        )
    elif name == "torch_full_ft":
        return common.torch_train_step(setup, common.torch_full_ft(setup, copy_model=copy_model))
    else:
        raise ValueError(f"unknown arm {name!r}; choose from {ARMS}.")
    return common.recipe_step(recipe, setup)


def sizes(setup: common.Setup) -> dict[str, dict[str, int]]:
    """Trainable and stored parameters per arm (stored = what the method saves, no heads)."""
    bb = setup.backbone
    dense = sum(v.numel() for v in bb.base().values())
    heads = sum(v.numel() for v in bb.head_params().values())
    hybrid = common.stored_params(bb, Hybrid(setup.rank))
    lora = common.stored_params(bb, LowRank(common.equal_size_rank(bb, Hybrid(setup.rank))))
    return {
        "moil": {"trainable": dense + heads + hybrid, "stored": hybrid},
        "moil_fit_only": {"trainable": dense + heads, "stored": hybrid},
        "full_ft": {"trainable": dense + heads, "stored": dense},
        "lora": {"trainable": lora + heads, "stored": lora},
        "peft_lora": {"trainable": lora + heads, "stored": lora},
        "torch_full_ft": {"trainable": dense + heads, "stored": dense},
    }


def memory_floor(setup: common.Setup, memory: dict) -> dict[str, float]:
    """MoIL's peak-memory floor: full fine-tuning's peak + one momentum copy of the targets
    + the student and its two AdamW moments (bytes → MiB), and moil's peak ÷ it."""
    bb = setup.backbone
    momentum = sum(v.numel() * v.element_size() for v in bb.base().values())
    student = 3 * common.stored_params(bb, Hybrid(setup.rank)) * 4  # fp32 params, m, v
    floor = memory["full_ft"]["peak_bytes"] + momentum + student
    mib = 2**20
    return {
        "moil_mib": memory["moil"]["peak_bytes"] / mib,
        "floor_mib": floor / mib,
        "momentum_mib": momentum / mib,
        "student_mib": student / mib,
        "ratio": memory["moil"]["peak_bytes"] / floor,
    }


def full_ft_excess(setup: common.Setup, memory: dict) -> dict[str, float]:
    """moil's full-FT peak over the plain loop's, in copies of the trained tensors (targets
    + heads). The plain loop updates the model in place; moil never modifies it, so the
    model's original weights live beside the trained ones: one copy in live bytes
    (``memory_trace.py``). This resident measure can show less (allocator caches)."""
    bb = setup.backbone
    trained = sum(v.numel() * v.element_size() for part in (bb.base(), bb.head_params()) for v in part.values())
    excess = memory["full_ft"]["peak_bytes"] - memory["torch_full_ft"]["peak_bytes"]
    floor = memory["torch_full_ft"]["peak_bytes"] + trained
    return {
        "excess_mib": excess / 2**20,
        "trained_mib": trained / 2**20,
        "copies": excess / trained,
        "ratio_to_floor": memory["full_ft"]["peak_bytes"] / floor,
    }


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(
        __doc__.splitlines()[0], steps_help="timed steps per arm per round", rounds=True, precision=True
    )
    p.add_argument("--memory-steps", type=int, default=2, help="steps per memory subprocess")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--memory-arm", default=None, help=common.argparse.SUPPRESS)
    args = common.parse(p, argv)
    setup = common.build(args.size, args.device, args.seed, args.precision)
    if args.memory_arm:  # child process: one arm, fresh
        common.measure_in_child(
            setup, lambda: make_arm(setup, args.memory_arm, copy_model=False), args.memory_steps
        )
        return {}
    steps, rounds = DEFAULTS[args.size]
    steps, rounds = common.steps_and_rounds(args, steps, rounds)

    arms = {name: make_arm(setup, name) for name in ARMS}
    times = common.interleaved(arms, rounds=rounds, steps=steps, warmup=1, device=setup.device)
    memory = {}
    if not args.no_memory:
        child = common.child_argv(args) + ["--memory-steps", str(args.memory_steps)]
        memory = common.run_children(
            os.path.abspath(__file__), {name: child + ["--memory-arm", name] for name in ARMS}
        )

    count = sizes(setup)
    t_ft, t_peft = times["full_ft"]["median"], times["peft_lora"]["median"]
    rows, ratios, min_ratios, paired, memory_ratios = [], {}, {}, {}, {}
    for name in ARMS:
        t = times[name]["median"]
        ratios[f"{name}/full_ft"] = t / t_ft
        ratios[f"{name}/peft_lora"] = t / t_peft
        min_ratios[f"{name}/full_ft"] = times[name]["min"] / times["full_ft"]["min"]
        paired[f"{name}/full_ft"] = common.paired_ratio(times, name, "full_ft")
        paired[f"{name}/full_ft (cpu)"] = common.paired_ratio(times, name, "full_ft", cpu=True)
        row = [
            name,
            count[name]["trainable"],
            count[name]["stored"],
            1e3 * t,
            1e3 * times[name]["min"],
            1e3 * times[name]["max"],
            t / t_ft,
            t / t_peft,
            min_ratios[f"{name}/full_ft"],
            paired[f"{name}/full_ft"],
            paired[f"{name}/full_ft (cpu)"],
        ]
        if memory:
            mib = memory[name]["peak_bytes"] / 2**20
            base = memory["full_ft"]["peak_bytes"] / 2**20
            memory_ratios[f"{name}/full_ft"] = mib / base if base > 0 else float("nan")
            row += [mib, memory_ratios[f"{name}/full_ft"]]
        rows.append(row)
    headers = [
        "arm",
        "trainable",
        "stored",
        "step ms (median)",
        "min",
        "max",
        "× full_ft",
        "× peft_lora",
        "× full_ft (of mins)",
        "× full_ft (paired)",
        "× full_ft (cpu, paired)",
    ]
    if memory:
        headers += ["peak Δ MiB", "mem × full_ft"]
    print(
        f"step_cost — {setup.description}; device {setup.device}; Hybrid({setup.rank}) vs "
        f"LowRank({common.equal_size_rank(setup.backbone, Hybrid(setup.rank))}) at equal size; "
        f"{rounds} rounds × {steps} steps, median of per-round means"
    )
    print(common.table(headers, rows))
    headline = {
        "full_ft/torch_full_ft": {
            "median": times["full_ft"]["median"] / times["torch_full_ft"]["median"],
            "min": times["full_ft"]["min"] / times["torch_full_ft"]["min"],
            "paired": common.paired_ratio(times, "full_ft", "torch_full_ft"),
            "cpu": common.paired_ratio(times, "full_ft", "torch_full_ft", cpu=True),
        },
        "lora/peft_lora": {
            "median": times["lora"]["median"] / t_peft,
            "min": times["lora"]["min"] / times["peft_lora"]["min"],
            "paired": common.paired_ratio(times, "lora", "peft_lora"),
            "cpu": common.paired_ratio(times, "lora", "peft_lora", cpu=True),
        },
    }
    floor, excess = {}, {}
    if memory:
        print(
            f"peak memory: {memory['full_ft']['method']}; baseline = model + batch loaded "
            f"({memory['full_ft']['baseline_bytes'] / 2**20:.0f} MiB)"
        )
        floor = memory_floor(setup, memory)
        excess = full_ft_excess(setup, memory)
        headline["full_ft/torch_full_ft"]["memory"] = (
            memory["full_ft"]["peak_bytes"] / memory["torch_full_ft"]["peak_bytes"]
        )
        headline["lora/peft_lora"]["memory"] = memory["lora"]["peak_bytes"] / memory["peft_lora"]["peak_bytes"]
    for key, r in headline.items():
        mem = f", memory {r['memory']:.3f}" if "memory" in r else ""
        print(
            f"{key}: step {r['median']:.3f} (minima {r['min']:.3f}, paired {r['paired']:.3f}, "
            f"cpu paired {r['cpu']:.3f}){mem}"
        )
    if floor:
        print(
            f"moil peak {floor['moil_mib']:.1f} MiB vs its floor {floor['floor_mib']:.1f} MiB "
            f"(full_ft peak + momentum copy of the targets {floor['momentum_mib']:.1f} + student with "
            f"its AdamW moments {floor['student_mib']:.1f}): × {floor['ratio']:.3f}"
        )
    if excess:
        print(
            f"full_ft peak - torch_full_ft peak = {excess['excess_mib']:.1f} MiB = {excess['copies']:.2f} copies "
            f"of the trained tensors ({excess['trained_mib']:.1f} MiB; 1 in live bytes: the unmodified model keeps "
            f"its original weights); full_ft ÷ (torch_full_ft + one copy) = {excess['ratio_to_floor']:.3f}"
        )
    return common.report(
        args,
        setup,
        {
            "hybrid_rank": setup.rank,
            "lora_rank": common.equal_size_rank(setup.backbone, Hybrid(setup.rank)),
            "steps": steps,
            "rounds": rounds,
            "params": count,
            "seconds_per_step": times,
            "peak_memory": memory,
            "ratios": ratios,
            "min_ratios": min_ratios,
            "paired_ratios": paired,
            "headline": headline,
            "memory_floor": floor,
            "full_ft_excess": excess,
            "memory_ratios": memory_ratios,
        },
    )


if __name__ == "__main__":
    main()
