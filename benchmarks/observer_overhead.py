"""Observer overhead: a ``transformers.Trainer`` step (and a plain PyTorch step) with and
without MoIL's imitation observer, time and peak memory side by side in one run.

Arms, on the same model, batch shape and task loss (``common.build``'s ITM setup); the
teacher is fully fine-tuned (every parameter trainable, as a user's run would be):

* ``trainer`` — ``transformers.Trainer`` (its default ``adamw_torch_fused``, lr 1e-4, betas
  (0.9, 0.98), weight decay 0.01, gradient clipping 1.0, linear schedule), no callback;
* ``trainer+moil`` — the same plus ``MoILCallback(ImitationObserver(Hybrid(r)))`` over the
  q/k/v targets (EMA target + one ``Gradient(1)`` step of the student per step);
* ``trainer+moil_k2`` — the same with two students, ``Hybrid(r)`` and the equal-size
  ``LowRank(r_eq)``, sharing the momentum target;
* ``loop`` — a plain ``forward; loss.backward(); opt.step(); opt.zero_grad()`` loop
  (``torch.optim.AdamW``, default foreach implementation, same hyper-parameters);
* ``loop+observer`` — the same with ``observer.update(state, model)`` between
  ``backward`` and ``opt.step()`` (one ``Hybrid(r)`` student).

Time: every arm lives in one process; each round runs every arm (order rotated each
round). A Trainer arm's round is one ``trainer.train()`` of ``1 + steps`` steps timed from
``on_step_begin`` to ``on_step_end`` (forward, backward, clipping, callback, optimiser and
scheduler step), its first step dropped (optimiser state is created lazily); a loop arm's
round is ``steps`` timed steps. Reported: median and minimum over rounds of the per-round
mean; ratios with ÷ without of the medians, of the minima, and the median of the per-round
ratios ("paired": the two arms ran seconds apart, so slow drifts in load cancel). Peak memory: each arm in a fresh subprocess
(``common.peak_memory``: ``VmHWM`` above the resident set with model and batch loaded),
two at a time.

Usage: ``python benchmarks/observer_overhead.py --size demo --threads 1 [--rounds N]
[--steps N] [--json PATH]``.
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from moil.approx import Hybrid, LowRank
from moil.integrations.trainer import MoILCallback
from moil.observer import ImitationObserver
from moil.schedules import bind_run

ARMS = ("trainer", "trainer+moil", "trainer+moil_k2", "loop", "loop+observer")
PAIRS = {
    "trainer+moil/trainer": ("trainer+moil", "trainer"),
    "trainer+moil_k2/trainer": ("trainer+moil_k2", "trainer"),
    "loop+observer/loop": ("loop+observer", "loop"),
}
#: (timed steps per arm per round, rounds) per size.
DEFAULTS = {"tiny": (3, 3), "demo": (3, 5), "vilt-b32": (1, 3)}
LR, BETAS, WEIGHT_DECAY = 1e-4, (0.9, 0.98), 0.01


def students(setup: common.Setup, k: int) -> dict:
    """``{"hybrid": Hybrid(r)}``, plus ``"lowrank": LowRank(r_eq)`` (equal stored size) if k = 2."""
    out = {"hybrid": Hybrid(setup.rank)}
    if k == 2:
        out["lowrank"] = LowRank(common.equal_size_rank(setup.backbone, Hybrid(setup.rank)))
    return out


def observer(setup: common.Setup, k: int) -> ImitationObserver:
    return ImitationObserver(students(setup, k), targets=list(setup.backbone.targets))


def items(setup: common.Setup) -> list[dict]:
    """The setup's batch as per-example dicts (the Trainer's default collator stacks them)."""
    batch = setup.batch
    return [{k: v[i] for k, v in batch.items()} for i in range(len(batch["input_ids"]))]


class StepTimer(TrainerCallback):
    """Seconds from ``on_step_begin`` to ``on_step_end`` of every step of a run."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        common.sync(args.device)
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        common.sync(args.device)
        self.seconds.append(time.perf_counter() - self._start)


class TrainerArm:
    """One ``Trainer`` per round on a model it owns, with ``MoILCallback`` if ``k`` > 0."""

    def __init__(self, setup: common.Setup, k: int, *, copy_model: bool = True) -> None:
        self.setup, self.k = setup, k
        self.model = copy.deepcopy(setup.model) if copy_model else setup.model
        self.model.train()
        self.out = tempfile.mkdtemp(prefix="moil-observer-overhead-")

    def train(self, steps: int) -> list[float]:
        """One ``trainer.train()`` of ``steps`` steps; the seconds of each step."""
        setup, timer = self.setup, StepTimer()
        bb, task_loss = setup.backbone, setup.task_loss

        class TaskTrainer(Trainer):
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                out = bb.outputs(model(**bb.inputs(inputs)), inputs)
                loss = task_loss(out, inputs)
                return (loss, out) if return_outputs else loss

        args = TrainingArguments(
            output_dir=self.out, max_steps=steps, per_device_train_batch_size=len(items(setup)),
            learning_rate=LR, adam_beta1=BETAS[0], adam_beta2=BETAS[1], weight_decay=WEIGHT_DECAY,
            report_to=[], use_cpu=setup.device.type == "cpu", save_strategy="no",
            logging_strategy="no", disable_tqdm=True, remove_unused_columns=False,
            dataloader_pin_memory=False, seed=0,
        )  # fmt: skip
        callbacks = [timer] + (
            [MoILCallback(observer(setup, self.k), export=False)] if self.k else []
        )
        data = items(setup) * steps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = TaskTrainer(
                model=self.model, args=args, train_dataset=data, callbacks=callbacks
            )
            trainer.remove_callback(PrinterCallback)  # disable_tqdm's end-of-run log line
            trainer.train()
        return timer.seconds

    def round(self, steps: int) -> float:
        return sum(self.train(1 + steps)[1:]) / steps

    def __call__(self) -> None:  # warm-up / memory: one short run
        self.train(2)


class LoopArm:
    """A plain PyTorch loop on a model it owns, with ``observer.update`` if ``k`` > 0."""

    def __init__(self, setup: common.Setup, k: int, *, copy_model: bool = True) -> None:
        self.setup = setup
        self.model = copy.deepcopy(setup.model) if copy_model else setup.model
        self.model.train()
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY
        )
        self.observer = bind_run(observer(setup, k), 100_000) if k else None
        self.state = self.observer.init(self.model) if k else None

    def __call__(self) -> None:
        bb, batch = self.setup.backbone, self.setup.batch
        self.setup.task_loss(bb.outputs(self.model(**bb.inputs(batch)), batch), batch).backward()
        if self.observer is not None:
            self.state, _ = self.observer.update(self.state, self.model)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def round(self, steps: int) -> float:
        common.sync(self.setup.device)
        start = time.perf_counter()
        for _ in range(steps):
            self()
        common.sync(self.setup.device)
        return (time.perf_counter() - start) / steps


def make_arm(setup: common.Setup, name: str, *, copy_model: bool = True):
    k = {"trainer": 0, "trainer+moil": 1, "trainer+moil_k2": 2, "loop": 0, "loop+observer": 1}
    if name not in k:
        raise ValueError(f"unknown arm {name!r}; choose from {ARMS}.")
    kind = TrainerArm if name.startswith("trainer") else LoopArm
    return kind(setup, k[name], copy_model=copy_model)


def interleaved(arms: dict, *, rounds: int, steps: int) -> dict[str, dict[str, float]]:
    """One warm-up call per arm, then ``rounds`` rotated rounds of ``arm.round(steps)``."""
    for arm in arms.values():
        arm()
    names, per_round = list(arms), {name: [] for name in arms}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            per_round[name].append(arms[name].round(steps))
    return {
        n: {"median": common.statistics.median(v), "min": min(v), "max": max(v), "rounds": v}
        for n, v in per_round.items()
    }


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0], steps_help="timed steps per arm per round", rounds=True)
    p.add_argument("--memory-steps", type=int, default=2, help="steps per memory subprocess")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--memory-arm", default=None, help=common.argparse.SUPPRESS)
    args = common.parse(p, argv)
    setup = common.build(args.size, args.device, args.seed)
    if args.memory_arm:  # child process: one arm, fresh, on the setup's own model

        def make():
            arm = make_arm(setup, args.memory_arm, copy_model=False)
            if isinstance(arm, TrainerArm):  # one Trainer run of --memory-steps steps
                return lambda: arm.train(args.memory_steps)
            return arm

        calls = 1 if args.memory_arm.startswith("trainer") else args.memory_steps
        common.measure_in_child(setup, make, calls)
        return {}
    steps, rounds = DEFAULTS[args.size]
    steps, rounds = common.steps_and_rounds(args, steps, rounds)

    arms = {name: make_arm(setup, name) for name in ARMS}
    times = interleaved(arms, rounds=rounds, steps=steps)
    memory = {}
    if not args.no_memory:
        child = common.child_argv(args) + ["--memory-steps", str(args.memory_steps)]
        for pair in (ARMS[i : i + 2] for i in range(0, len(ARMS), 2)):  # two cores: two at once
            memory |= common.run_children(
                os.path.abspath(__file__), {name: child + ["--memory-arm", name] for name in pair}
            )

    ratios, min_ratios, paired_ratios, memory_ratios, extra_ms = {}, {}, {}, {}, {}
    for key, (with_, without) in PAIRS.items():
        ratios[key] = times[with_]["median"] / times[without]["median"]
        paired_ratios[key] = common.paired_ratio(times, with_, without)
        min_ratios[key] = times[with_]["min"] / times[without]["min"]
        extra_ms[key] = 1e3 * (times[with_]["median"] - times[without]["median"])
        if memory:
            base = memory[without]["peak_bytes"]
            memory_ratios[key] = memory[with_]["peak_bytes"] / base if base > 0 else float("nan")
    rows = []
    for key, (with_, without) in PAIRS.items():
        row = [
            key,
            1e3 * times[with_]["median"],
            1e3 * times[without]["median"],
            ratios[key],
            min_ratios[key],
            paired_ratios[key],
            extra_ms[key],
        ]
        if memory:
            mib = lambda n: memory[n]["peak_bytes"] / 2**20
            row += [mib(with_), mib(without), memory_ratios[key]]
        rows.append(row)
    headers = ["with / without", "with ms", "without ms", "× time", "× (mins)", "× (paired)", "+ms"]
    if memory:
        headers += ["with peak Δ MiB", "without MiB", "× memory"]
    lr_rank = common.equal_size_rank(setup.backbone, Hybrid(setup.rank))
    print(
        f"observer_overhead — {setup.description}; device {setup.device}; students Hybrid("
        f"{setup.rank}) (k=2: + LowRank({lr_rank})); {rounds} rounds × {steps} steps, median "
        "of per-round means"
    )
    print(common.table(headers, rows))
    print(
        common.table(
            ["arm", "step ms (median)", "min", "max"],
            [[n, *(1e3 * times[n][s] for s in ("median", "min", "max"))] for n in ARMS],
        )
    )
    if memory:
        print(
            f"peak memory: {memory['trainer']['method']}; baseline = model + batch loaded "
            f"({memory['trainer']['baseline_bytes'] / 2**20:.0f} MiB)"
        )
    return common.report(
        args,
        setup,
        {
            "hybrid_rank": setup.rank,
            "lowrank_rank": lr_rank,
            "steps": steps,
            "rounds": rounds,
            "load_average": os.getloadavg(),
            "seconds_per_step": times,
            "peak_memory": memory,
            "ratios": ratios,
            "min_ratios": min_ratios,
            "paired_ratios": paired_ratios,
            "memory_ratios": memory_ratios,
            "extra_ms_per_step": extra_ms,
        },
    )


if __name__ == "__main__":
    main()
