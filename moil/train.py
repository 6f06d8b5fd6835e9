"""The training loop: step a recipe over batches, checkpoint, resume exactly.

Everything that changes lives in the recipe's state, so resuming is
``restore_state(init(...), checkpoint)`` and continuing with the batch of the next
step: a run stopped after ``k`` steps and resumed ends bitwise equal to one that
never stopped (on the same device and threads).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from moil.batch_source import Batches, batch_source
from moil.checkpoint import load_checkpoint, restore_state, save_checkpoint, split_state
from moil.distributed import (
    active,
    agree,
    check_plain_tensors,
    full_state,
    init_world,
    local_state,
    on_main,
    shard_batch,
)
from moil.precision import DTYPES, Autocast
from moil.schedules import bind_run
from moil.train_checks import check_arguments

__all__ = ["CHECKPOINT", "evaluate", "first_non_finite", "load_state", "save_state", "step_seed", "train"]

CHECKPOINT = "checkpoint.safetensors"


def save_state(path: str | Path, state: Any, metadata: Mapping[str, Any] | None = None,
               *, keep_previous: bool = False) -> None:
    """Atomically write a recipe state (tensors + scalars) to ``path``.

    Raises:
      FloatingPointError: a tensor of the state is NaN/inf (only finite states are
        checkpointed); nothing is written.
    """
    tensors, scalars = split_state(state)
    if (bad := first_non_finite(tensors)) is not None:
        raise FloatingPointError(f"save_state: {bad!r} holds NaN/inf; {path} was not written.")
    save_checkpoint(path, tensors, {"scalars": scalars, **(metadata or {})}, keep_previous=keep_previous)


def first_non_finite(tensors: Mapping[str, Tensor]) -> str | None:
    """The first key (sorted) whose floating-point tensor holds a NaN or inf, else ``None``."""
    for key in sorted(tensors):
        t = tensors[key]
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            return key
    return None


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
    checkpoint_seconds: float | None = None,
    resume: bool = False,
    on_step: Callable[[int, dict], None] | None = None,
    precision: Literal["fp32", "bf16", "fp16"] = "fp32",
    compile: bool | Callable[[Callable], Callable] = False,
    finalize: bool = True,
    validate: Callable[[Any], Mapping[str, float]] | None = None,
    validate_every: int | None = None,
) -> Any:
    """Run ``recipe`` for ``steps`` steps; return its (finalized) state.

    Args:
      recipe: a :class:`moil.recipes.Recipe`; its schedules are bound to ``steps``
        (:func:`moil.schedules.bind_run`): ``total_steps=None`` becomes the run's length,
        a schedule that ends earlier is refused, a momentum too slow for the run warns.
      backbone: a :class:`moil.backbones.Backbone`.
      batches: ``step -> batch`` (best: resume needs no replay), a re-iterable (a
        ``DataLoader``, a list, a dataset of batches: passed over epoch after epoch,
        ``set_epoch(e)`` called on it or its sampler first when it has one) or a one-shot
        iterator (it must last ``steps`` batches). On resume the first ``k`` batches are
        skipped; exact when each pass yields the batches an uninterrupted run saw (e.g. a
        ``DataLoader`` with a seeded ``generator``, or a sampler keyed by ``set_epoch``).
      steps: total steps (a resumed run continues up to this count).
      seed: student-initialisation seed (recorded; resume checks it).
      run_dir: where ``checkpoint.safetensors`` goes; ``None`` = no checkpoints.
      checkpoint_every: also checkpoint every this many steps.
      checkpoint_seconds: also checkpoint after a step when this many seconds have
        passed since the last checkpoint (bounds what a SIGKILL loses).
      resume: continue from ``run_dir``'s checkpoint if there is one.
      on_step: called as ``on_step(step, metrics)`` after each step.
      precision: autocast dtype of the forward (``"bf16"``/``"fp16"``) or fp32.
      compile: ``True`` runs ``recipe.step`` under ``torch.compile(step, dynamic=False)``
        (inductor); a function ``step -> compiled step`` chooses the compiler and all its
        options (``dynamic=False`` is not added), e.g.
        ``functools.partial(torch.compile, mode="max-autotune")`` or ``backend="aot_eager"``.
      finalize: apply the recipe's end-of-training fits (e.g. a final SVD fit).
      validate: ``state -> {name: value}``, called after every ``validate_every``-th
        step (before the fits of ``finalize``); its values join that step's metrics
        (``on_step``), e.g. a validation score for a learning curve. It runs under its own
        seed of ``(seed, step)`` inside ``torch.random.fork_rng``, so what it draws changes
        neither training nor the caller's RNG, and a resumed run redraws it alike.
        Under torchrun it is called on every rank with that rank's state.
      validate_every: steps between ``validate`` calls (required with ``validate``).

    If a step raises (NaN loss, Ctrl-C, SIGTERM turned into an exception by the
    caller), the last good state is checkpointed before the error propagates, so no
    finished step is lost. Only a finite state is ever checkpointed: a state holding
    NaN/inf (e.g. an optimiser moment that overflowed) leaves the last finite
    checkpoint in place. The checkpoint before the newest is kept as
    ``checkpoint.prev.safetensors``.
    """
    check_arguments(recipe, backbone, steps=steps, seed=seed, run_dir=run_dir, checkpoint_every=checkpoint_every,
                    checkpoint_seconds=checkpoint_seconds, resume=resume, on_step=on_step, validate=validate,
                    validate_every=validate_every, compile=compile)
    steps, seed = int(steps), int(seed)  # a numpy integer is an integer too
    if precision != "fp32":
        if precision not in DTYPES:
            raise ValueError(f"train: precision must be 'fp32', 'bf16' or 'fp16', got {precision!r}.")
        backbone = Autocast(backbone, DTYPES[precision])
    # Schedules that span the run get its length; one shorter than the run is refused.
    recipe = bind_run(recipe, steps)
    path = Path(run_dir) / CHECKPOINT if run_dir is not None else None
    # Under torchrun: join the process group; each step then averages the task gradients
    # and each rank keeps its own targets' imitation (moil.distributed). A checkpoint holds
    # the whole state, written by rank 0; a resumed rank takes back its part.
    world = init_world(_device_of(backbone))
    check_plain_tensors(backbone.base(), "train")
    with active(world):
        state = recipe.init(backbone, seed=seed)
    if resume and path is not None and path.exists():
        state, metadata = load_state(path, state if world.size == 1 else recipe.init(backbone, seed=seed))
        with active(world):
            state = local_state(recipe, state, backbone)
        if metadata.get("seed", seed) != seed:
            raise ValueError(f"train: {path} was written with seed={metadata['seed']}, not seed={seed}.")
        if state.step > steps:
            raise ValueError(f"train: {path} is at step {state.step}, past steps={steps}; resume with "
                             f"steps >= {state.step}.")
    compiler = (lambda step: torch.compile(step, dynamic=False)) if compile is True else compile
    step_fn = compiler(recipe.step) if compiler else recipe.step
    if not callable(step_fn):
        raise ValueError(f"train: compile(step) must return the compiled step (a function), got {step_fn!r}.")
    next_batch = batch_source(batches, state.step)
    meta = {"seed": seed, "recipe": type(recipe).__name__}
    saved_at = time.monotonic()

    def checkpoint(state: Any) -> None:
        nonlocal saved_at
        with active(world):
            whole = full_state(recipe, state, backbone, world, dst=0)
        on_main(lambda: save_state(path, whole, {**meta, "step": state.step}, keep_previous=True), world)
        saved_at = time.monotonic()

    try:
        while state.step < steps:
            batch = next_batch(state.step)
            if world.size > 1:
                batch = shard_batch(batch, world)  # this rank's slice of the global batch
            # Randomness inside a step (dropout, ViLT's patch sampling) is a function of
            # (seed, step) alone: resuming replays it exactly, and the caller's global
            # RNG is left as it was.
            with torch.random.fork_rng(devices=_cuda_devices()):
                torch.manual_seed(step_seed(seed, state.step) + world.rank)
                with active(world):
                    state, metrics = step_fn(state, backbone, batch)
            if validate is not None and state.step % validate_every == 0:
                metrics = _validated(validate, state, metrics, step_seed(seed, state.step) + VALIDATE_SEED)
            if on_step is not None:
                on_step(state.step, metrics)
            if path is not None and (
                (checkpoint_every and state.step % checkpoint_every == 0)
                or (checkpoint_seconds and agree(time.monotonic() - saved_at >= checkpoint_seconds, world))
            ):
                checkpoint(state)
    except BaseException as err:
        if path is not None and world.size > 1:
            # Other ranks may be gone or elsewhere: no collective on the way out.
            err.add_note(f"Under torchrun a failing step is not checkpointed; {path} holds the last "
                         "periodic checkpoint (train.checkpoint_every).")
        elif path is not None:
            if first_non_finite(split_state(state)[0]) is None:
                checkpoint(state)
            else:
                err.add_note(f"The state at step {state.step} holds NaN/inf and was not checkpointed; "
                             f"{path} (if it exists) holds the last finite state.")
        raise
    if path is not None:
        checkpoint(state)
    if world.size > 1:
        with active(world):
            state = full_state(recipe, state, backbone, world)  # every rank: the whole state
    return recipe.finalize(state, backbone) if finalize else state


VALIDATE_SEED = 104_729  # offsets validate's RNG stream from the step's


def _validated(validate: Callable[[Any], Mapping[str, float]], state: Any, metrics: dict, rng_seed: int) -> dict:
    """``metrics`` joined by ``validate(state)``'s, drawn under their own seed (the caller's
    global RNG and the next step's are left as they were); a name both use is refused."""
    with torch.random.fork_rng(devices=_cuda_devices()):
        torch.manual_seed(rng_seed)
        extra = validate(state)
    if not isinstance(extra, Mapping):
        raise TypeError(f"train: validate must return a dict {{name: value}}, got {extra!r}.")
    if clash := sorted(set(extra) & set(metrics)):
        raise ValueError(f"train: validate returned {clash}, names the step's own metrics use; rename them "
                         "(e.g. 'val/<name>').")
    return {**metrics, **dict(extra)}


def step_seed(seed: int, step: int) -> int:
    """The global-RNG seed used for ``step`` of a run seeded ``seed``."""
    return (seed * 1_000_003 + step * 7919 + 17) % 2**63


def _device_of(backbone: Any) -> torch.device:
    return next(iter(backbone.base().values())).device


def _cuda_devices() -> list[int]:
    return [torch.cuda.current_device()] if torch.cuda.is_available() else []


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
