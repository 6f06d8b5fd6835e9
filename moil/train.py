"""The training loop: step a recipe over batches, checkpoint, resume exactly.

Everything that changes lives in the recipe's state, so resuming is
``restore_state(init(...), checkpoint)`` and continuing with the batch of the next
step: a run stopped after ``k`` steps and resumed ends bitwise equal to one that
never stopped (on the same device and threads).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from moil.checkpoint import load_checkpoint, restore_state, save_checkpoint, split_state
from moil.precision import DTYPES, Autocast
from moil.schedules import bind_run

__all__ = ["CHECKPOINT", "evaluate", "load_state", "save_state", "step_seed", "train"]

CHECKPOINT = "checkpoint.safetensors"
Batches = Callable[[int], Mapping[str, Tensor]] | Iterable[Mapping[str, Tensor]]


def save_state(path: str | Path, state: Any, metadata: Mapping[str, Any] | None = None) -> None:
    """Atomically write a recipe state (tensors + scalars) to ``path``."""
    tensors, scalars = split_state(state)
    save_checkpoint(path, tensors, {"scalars": scalars, **(metadata or {})})


def load_state(path: str | Path, template: Any) -> tuple[Any, dict]:
    """Read a state written by :func:`save_state` into ``template``'s structure."""
    tensors, metadata = load_checkpoint(path)
    if "scalars" not in metadata:
        raise ValueError(f"{path} is a moil checkpoint but not a training state (no 'scalars').")
    return restore_state(template, tensors, metadata["scalars"]), metadata


def train(
    recipe: Any,
    backbone: Any,
    batches: Batches,
    *,
    steps: int,
    seed: int = 0,
    run_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    on_step: Callable[[int, dict], None] | None = None,
    precision: Literal["fp32", "bf16", "fp16"] = "fp32",
    compile: bool = False,
    finalize: bool = True,
) -> Any:
    """Run ``recipe`` for ``steps`` steps; return its (finalized) state.

    Args:
      recipe: a :class:`moil.recipes.Recipe`; its schedules are bound to ``steps``
        (:func:`moil.schedules.bind_run`): ``total_steps=None`` becomes the run's length,
        a schedule that ends earlier is refused, a momentum too slow for the run warns.
      backbone: a :class:`moil.backbones.Backbone`.
      batches: ``step -> batch`` (best: resume needs no replay) or an iterable
        (on resume the first ``k`` batches are skipped).
      steps: total steps (a resumed run continues up to this count).
      seed: student-initialisation seed (recorded; resume checks it).
      run_dir: where ``checkpoint.safetensors`` goes; ``None`` = no checkpoints.
      checkpoint_every: also checkpoint every this many steps.
      resume: continue from ``run_dir``'s checkpoint if there is one.
      on_step: called as ``on_step(step, metrics)`` after each step.
      precision: autocast dtype of the forward (``"bf16"``/``"fp16"``) or fp32.
      compile: run ``recipe.step`` under ``torch.compile``.
      finalize: apply the recipe's end-of-training fits (e.g. a final SVD fit).

    If a step raises (NaN loss, Ctrl-C), the last good state is checkpointed
    before the error propagates, so no finished step is lost.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"train: steps must be an integer >= 0, got steps={steps!r}.")
    if precision != "fp32":
        if precision not in DTYPES:
            raise ValueError(f"train: precision must be 'fp32', 'bf16' or 'fp16', got {precision!r}.")
        backbone = Autocast(backbone, DTYPES[precision])
    # Schedules that span the run get its length; one shorter than the run is refused.
    recipe = bind_run(recipe, steps)
    path = Path(run_dir) / CHECKPOINT if run_dir is not None else None
    state = recipe.init(backbone, seed=seed)
    if resume and path is not None and path.exists():
        state, metadata = load_state(path, state)
        if metadata.get("seed", seed) != seed:
            raise ValueError(f"train: {path} was written with seed={metadata['seed']}, not seed={seed}.")
    step_fn = torch.compile(recipe.step, dynamic=False) if compile else recipe.step
    next_batch = _batch_source(batches, state.step)
    meta = {"seed": seed, "recipe": type(recipe).__name__}
    try:
        while state.step < steps:
            batch = next_batch(state.step)
            # Randomness inside a step (dropout, ViLT's patch sampling) is a function of
            # (seed, step) alone: resuming replays it exactly, and the caller's global
            # RNG is left as it was.
            with torch.random.fork_rng(devices=_cuda_devices()):
                torch.manual_seed(step_seed(seed, state.step))
                state, metrics = step_fn(state, backbone, batch)
            if on_step is not None:
                on_step(state.step, metrics)
            if path is not None and checkpoint_every and state.step % checkpoint_every == 0:
                save_state(path, state, meta)
    except BaseException:
        if path is not None:
            save_state(path, state, meta)
        raise
    if path is not None:
        save_state(path, state, meta)
    return recipe.finalize(state, backbone) if finalize else state


def step_seed(seed: int, step: int) -> int:
    """The global-RNG seed used for ``step`` of a run seeded ``seed``."""
    return (seed * 1_000_003 + step * 7919 + 17) % 2**63


def _cuda_devices() -> list[int]:
    return [torch.cuda.current_device()] if torch.cuda.is_available() else []


def _batch_source(batches: Batches, start: int) -> Callable[[int], Mapping[str, Tensor]]:
    if callable(batches):
        return batches
    iterator = itertools.islice(iter(batches), start, None)

    def take(step: int) -> Mapping[str, Tensor]:
        try:
            return next(iterator)
        except StopIteration:
            raise ValueError(
                f"train: the batch iterable ran out at step {step}; pass more batches, fewer "
                "steps, or a function step -> batch."
            ) from None

    return take


@torch.no_grad()
def evaluate(
    backbone: Any,
    params: Mapping[str, Tensor],
    batches: Iterable[Mapping[str, Tensor]],
    metrics: Mapping[str, Callable[[Mapping[str, Tensor], Mapping[str, Tensor]], Any]],
) -> dict[str, float]:
    """Forward every batch with ``params``; compute each metric on the concatenation.

    Args:
      backbone: a backbone.
      params: overrides (e.g. a candidate from ``recipe.candidates(state, backbone)``).
      batches: evaluation batches (dicts of tensors with a leading batch dim).
      metrics: ``{name: fn(outputs, batch) -> number}`` over all batches at once,
        so recall@K ranks the whole split.
    """
    outs: dict[str, list[Tensor]] = {}
    ins: dict[str, list[Tensor]] = {}
    for batch in batches:
        for k, v in backbone(params, batch).items():
            if v.ndim > 0:
                outs.setdefault(k, []).append(v.float() if v.is_floating_point() else v)
            else:
                outs[k] = [v]
        for k, v in batch.items():
            if isinstance(v, Tensor):
                ins.setdefault(k, []).append(v)
    cat = {k: torch.cat(v) if v[0].ndim > 0 else v[0] for k, v in outs.items()}
    # Inputs whose trailing shapes differ across batches (token lengths) are left
    # out: metrics read labels, not tokens.
    batch_cat = {
        k: torch.cat(v) for k, v in ins.items() if len({t.shape[1:] for t in v}) == 1 and v[0].ndim > 0
    }
    return {name: float(fn(cat, batch_cat)) for name, fn in metrics.items()}
