"""A run folder as a small transactional store: atomic files, one writer, a manifest.

Every small file (``run.json``, ``config.toml``, ``results.json``) is written
atomically (:func:`moil.checkpoint.atomic.atomic_write_bytes`: temp file in the same
folder, fsync, ``os.replace``); temp files of dead writers are removed when the next
writer starts. One process writes a folder at a time: :func:`hold` takes an exclusive
``flock`` on ``<folder>/.lock`` (POSIX; ``filelock`` truncates its lock file on open, so
it could not report the holder's pid) and a second writer is refused with the pid.

``run.json`` is the *manifest*: the run's identity (arm, task, seed, lr, steps), the
resolved config and the moil version, written before training. ``--resume`` compares
the requested manifest with it before anything is touched (:func:`resume_problems`)
and refuses every difference by name (``lr: 0.001 -> 0.05``), except the documented
:data:`SAFE_CHANGES`: more (or fewer) ``steps`` — never fewer than the checkpoint has
done; the learning-rate and momentum schedules are then re-bound to the new length —
and fields that do not change the numbers (checkpoint cadence, scored splits, threads,
workers, the list of seeds/tasks/arms of the grid around the run).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import moil
from moil.checkpoint.atomic import atomic_write_bytes, remove_stale_temps

__all__ = [
    "MANIFEST", "SAFE_CHANGES", "ResumeMismatchError", "RunFolderError", "RunFolderLockedError", "check_apart",
    "flat_changes", "hold", "inputs_of", "read_json", "refuse_both", "resume_problems", "run_manifest", "write_json", "write_text",
]

MANIFEST = "run.json"
LOCK = ".lock"
#: ``train.*`` fields a resume may change: they do not change what a step computes.
SAFE_CHANGES = ("train.checkpoint_every", "train.eval_splits", "train.eval_every", "train.threads", "train.workers",
                "train.seeds", "train.tasks", "train.sweep_steps", "train.steps")


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked; the message names the folder and the fix."""


class RunFolderLockedError(RunFolderError):
    """Another live process holds the run folder's lock."""


class ResumeMismatchError(RunFolderError):
    """``--resume`` with a config that differs from the one the run was made with."""


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, value: Any) -> Path:
    """Write ``value`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(value, indent=1) + "\n")


def read_json(path: str | os.PathLike, *, required: tuple[str, ...] = (), fix: str = "") -> dict:
    """A JSON object from ``path``; a torn, empty or incomplete file is a :class:`RunFolderError`
    naming the file, what is wrong and ``fix`` (never a bare ``JSONDecodeError``/``KeyError``)."""
    path = Path(path)
    fix = fix or "delete it and run again, or restore it from a backup"
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        what = "is empty" if not path.read_bytes().strip() else f"is not valid JSON (torn or damaged: {err})"
        raise RunFolderError(f"{path} {what}; {fix}.") from None
    if not isinstance(value, dict):
        raise RunFolderError(f"{path} holds a JSON {type(value).__name__}, not an object; {fix}.")
    if missing := [k for k in required if k not in value]:
        raise RunFolderError(f"{path} lacks the field(s) {missing}; {fix}.")
    return value


# ----------------------------------------------------------------------------- the lock

_held: dict[str, tuple[int, int]] = {}  # realpath -> (fd, depth): re-entrant in one process


def _holder(lock: Path) -> tuple[str, str]:
    """Who holds ``lock`` and how to stop it (its pid is in the file, written by :func:`hold`)."""
    try:
        pid = lock.read_text().strip()
    except OSError:
        pid = ""
    if not pid.isdigit():
        return "another process", "stop it"
    # torchrun starts each worker in a session of its own: SIGKILL to torchrun alone leaves its
    # workers training. SIGTERM to rank 0 (the writer) ends it and, through it, the other ranks.
    return f"pid {pid}", f"stop it (`kill {pid}`; after a SIGKILL to torchrun, its workers may still run)"


@contextmanager
def hold(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold ``folder``'s exclusive writer lock in the block (creating the folder); on
    entry, temp files left by dead writers are removed. Re-entrant within a process.

    Raises:
      RunFolderLockedError: a live process holds the lock (its pid is named).
      RunFolderError: ``folder`` exists and is not a directory.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"run folder {folder} exists and is not a folder; give another --out path.")
    folder.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(folder)
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        try:
            yield folder
        finally:
            _held[key] = (fd, _held[key][1] - 1)
        return
    lock = folder / LOCK
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder, stop = _holder(lock)
        raise RunFolderLockedError(
            f"run folder {folder} is in use by {holder} (a moil process writing it); wait for it to "
            f"finish or {stop}, then try again."
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _held[key] = (fd, 1)
        remove_stale_temps(folder)
        yield folder
    finally:
        _held.pop(key, None)
        os.close(fd)  # releases the flock


# ----------------------------------------------------------------------------- the manifest


def run_manifest(config: Mapping[str, Any], arm: str, task: str, seed: int, lr: float, steps: int,
                 made_by: str) -> dict[str, Any]:
    """The manifest of one run: identity, the resolved config (``config_dict``), moil's version."""
    return {"kind": "run", "made_by": made_by, "moil_version": moil.__version__, "arm": arm,
            "task": task, "seed": seed, "lr": lr, "steps": steps, "config": dict(config)}


def _view(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What decides a run's numbers: identity, data, model, train (minus the safe fields), its arm."""
    config = manifest.get("config") or {}
    safe = {f.split(".", 1)[1] for f in SAFE_CHANGES}
    view = {k: manifest.get(k) for k in ("arm", "task", "seed", "lr")}
    view["data"] = config.get("data")
    view["model"] = config.get("model")
    view["train"] = {k: v for k, v in (config.get("train") or {}).items() if k not in safe}
    arm = next((a for a in config.get("arms", []) if a.get("name") == manifest.get("arm")), None)
    # The run's lr is compared as `lr`: the arm's lr table for other tasks does not matter.
    view[f"arms[{manifest.get('arm')}]"] = None if arm is None else {k: v for k, v in arm.items() if k != "lr"}
    return view


def flat_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Every differing leaf as ``"path: old -> new"`` (dicts by key, equal-length lists by index)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{k}" if prefix else str(k)
            out += flat_changes(old.get(k, "<unset>"), new.get(k, "<unset>"), path)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [c for i, (a, b) in enumerate(zip(old, new)) for c in flat_changes(a, b, f"{prefix}[{i}]")]
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def resume_problems(old: Mapping[str, Any], new: Mapping[str, Any], checkpoint_step: int | None) -> list[str]:
    """The differences that forbid resuming run ``old`` as ``new`` (empty: resume is safe).

    Everything in :func:`_view` must be equal; ``steps`` may change but never fall below
    ``checkpoint_step`` (the steps already trained). A manifest without a config (written
    by an older moil) is checked on its identity fields only.
    """
    if "config" not in old:
        keys = [k for k in ("arm", "task", "seed", "lr") if k in old]
        problems = flat_changes({k: old[k] for k in keys}, {k: new.get(k) for k in keys})
    else:
        problems = flat_changes(_view(old), _view(new))
    if checkpoint_step is not None and new["steps"] < checkpoint_step:
        problems.append(f"steps: {new['steps']} is below the {checkpoint_step} steps the checkpoint has done")
    return problems


def mismatch_error(folder: Path, problems: list[str]) -> ResumeMismatchError:
    """The error of a refused resume: each changed field, and the two ways on."""
    return ResumeMismatchError(
        f"cannot resume {folder}: the requested run differs from the one it holds ({folder / MANIFEST}):\n  "
        + "\n  ".join(problems)
        + "\nResume with the config it was made with, train into another --out folder, or pass "
        "--overwrite to discard it and start again."
    )


# ----------------------------------------------------------------------------- what to do


def checkpoint_step(path: Path) -> int | None:
    """Steps done by the checkpoint at ``path`` (``None``: there is none), from its header."""
    from moil.checkpoint import read_metadata

    if not path.is_file():
        return None
    meta = read_metadata(path)
    scalars = meta.get("scalars", {})
    step = meta.get("step", scalars.get("step", scalars.get("task/step")))
    return step if isinstance(step, int) else None


def inputs_of(config: Any) -> dict[str, str | None]:
    """The paths a run of ``config`` (a :class:`~moil.harness.config.Config`) reads: its model
    folder and data splits (``None``: not set) — what :func:`check_apart` protects."""
    d = config.data
    return {"model.pretrained": config.model.pretrained, "data.train": d.train, "data.val": d.val, "data.test": d.test}


def check_apart(out: str | os.PathLike, inputs: Mapping[str, str | None], flag: str, *, around: bool = False) -> None:
    """Refuse an output folder that is one of the run's inputs (``{"model.pretrained": path, ...}``)
    or lies inside one — with ``around`` (an export, which replaces its folder) also one holding an
    input: writing there would mix outputs into, or replace, the user's model or data.

    Raises:
      RunFolderError: naming ``flag`` (``--out``), the input and the fix.
    """
    target = Path(os.path.realpath(Path(out).expanduser()))
    for field, path in inputs.items():
        if path is None or not Path(path).expanduser().exists():
            continue  # a hub id, or not there: nothing of the user's to protect
        source = Path(os.path.realpath(Path(path).expanduser()))
        if target == source or source in target.parents or (around and target in source.parents):
            raise RunFolderError(
                f"{flag} {out} is {'' if target == source else 'inside ' if source in target.parents else 'around '}"
                f"{field} = {path!r}, an input of this run; writing there would mix into or replace it — "
                f"give {flag} a folder of its own."
            )


def refuse_both(resume: bool, overwrite: bool) -> None:
    """``--resume`` keeps what a folder holds and ``--overwrite`` discards it: never both."""
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other (--resume continues the run in "
                             "--out, --overwrite discards it); pass only one of them.")


def plan_run(folder: Path, manifest: Mapping[str, Any], *, resume: bool, overwrite: bool,
             checkpoint: str) -> str:
    """What a run into ``folder`` does, decided by reading only: ``"fresh"`` (nothing there),
    ``"overwrite"`` (discard what is there), ``"resume"`` or ``"done"`` (finished as asked).

    Raises:
      RunFolderError: both ``resume`` and ``overwrite``; ``folder`` is a file or a grid folder; or it holds a run and neither
        ``resume`` nor ``overwrite`` is given; or its manifest is torn.
      ResumeMismatchError: ``resume`` with a config that differs (each field named).
    """
    folder = Path(folder)
    refuse_both(resume, overwrite)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"run folder {folder} exists and is not a folder; give another --out path.")
    if (folder / "grid.json").exists():
        raise RunFolderError(f"{folder} is a `moil ablate`/`moil demo` folder, not a run folder; give "
                             "`moil train` another --out folder.")
    files = {name: folder / name for name in (MANIFEST, checkpoint, "results.json")}
    if not any(p.exists() for p in files.values()):
        return "fresh"
    if overwrite:
        return "overwrite"
    finished = files["results.json"].exists()
    if not resume:
        what = "a finished run" if finished else "an unfinished run (continue it with --resume)"
        raise RunFolderError(f"{folder} already holds {what}; pass --overwrite to discard it and start "
                             "again, or choose another --out folder.")
    step = checkpoint_step(files[checkpoint])
    if files[MANIFEST].exists():
        old = read_json(files[MANIFEST], required=("arm", "task", "seed", "lr"),
                        fix="it is the run's manifest: restore it, or pass --overwrite to start again")
        if problems := resume_problems(old, manifest, step):
            raise mismatch_error(folder, problems)
        if finished and step == manifest["steps"] == old.get("steps"):
            return "done"
    return "resume"
