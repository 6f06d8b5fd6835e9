"""Stored-size curves: the rows of a results summary that are one method at different sizes.

A *curve* of a task is the summary rows (``results["summary"]``) that differ only in their
size fields, each drawn at its stored size ``p`` (the numbers an arm keeps) against its
test metric ``mean ± std`` over seeds — accuracy vs stored parameters, the comparison at
equal stored size read along the size axis. Which rows are one method:

* the stored candidate (``primary``) of a non-MoIL arm (``lora``, ``peft-*``, ``head``,
  ``full``): same curve when the arms' configs are equal without ``name``, ``rank``, ``lr``, ``seeds``
  (and ``students``/``momentum``, which only a MoIL arm reads);
* a MoIL student ``student/<name>``: same curve when its student configs are equal
  without ``name``, ``rank``, ``transform_rank``, within one arm;
* a MoIL teacher (full fine-tuning of the targets): a reference point of its own arm.

Momentum targets and other non-stored candidates are left out. Labels name the method
(``"LoRA (lowrank)"``, ``"moil · hybrid, refit als"``) and only the fields that tell the
curves apart. The function is pure: the report and its figure
(:func:`moil.harness.plots.size_figure`) draw what it returns.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["ARM_SIZE_FIELDS", "RECIPE_LABELS", "STUDENT_SIZE_FIELDS", "Curve", "has_curve", "size_curves"]

ARM_SIZE_FIELDS = ("name", "rank", "lr", "seeds")  # an arm's fields that set its size, sweep or seeds, not its method
MOIL_ONLY_FIELDS = ("students", "momentum")  # arm fields no non-MoIL recipe reads
STUDENT_SIZE_FIELDS = ("name", "rank", "transform_rank")
_REFIT_FIELDS = ("refit", "refit_every", "final_fit")  # said as "refit als [every n]"

RECIPE_LABELS = {
    "lora": "LoRA", "peft-lora": "LoRA (PEFT)", "peft-dora": "DoRA (PEFT)", "peft-pissa": "PiSSA (PEFT)",
    "head": "head-only", "full": "full fine-tuning",
}


@attrs.frozen
class Curve:
    """One method of a task at its stored sizes.

    Attributes:
      label: what the method is, unique among a task's curves.
      points: ``(stored_parameters, test_mean, test_std, seeds)`` per summary row, sorted by
        stored size (then mean); ``test_std`` is the sample std over seeds (0 for one seed).
      sources: ``(arm, candidate)`` of each point's summary row, in the order of ``points``.
      reference: full fine-tuning (a MoIL teacher or a ``full`` arm), drawn as a reference level.
    """

    label: str
    points: tuple[tuple[int, float, float, int], ...]
    sources: tuple[tuple[str, str], ...] = ()
    reference: bool = False

    @property
    def sizes(self) -> int:
        """How many distinct stored sizes the curve has."""
        return len({p[0] for p in self.points})


def has_curve(curves: list[Curve]) -> bool:
    """Whether any curve has ≥ 2 stored sizes (else there is no size axis to draw)."""
    return any(c.sizes >= 2 for c in curves)


def _without(config: dict, fields: tuple[str, ...]) -> dict:
    return {k: v for k, v in config.items() if k not in fields}


def _frozen(value: Any) -> Any:
    """A hashable, order-free form of plain JSON data (a group key)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _refit(student: dict) -> str:
    refit = student.get("refit", "none")
    if refit == "none":
        return ""
    every = student.get("refit_every", 0)
    return f", refit {refit}" + (f" every {every} steps" if every else "")


@attrs.frozen
class _Group:
    key: Any
    base: str  # the method's name; the fields that differ within its family are added to it
    family: Any  # the groups whose differing fields are named in the label
    fields: tuple[tuple[str, Any], ...]  # the fields that may tell it apart from its family
    reference: bool


def _group(row: dict, recipe: str, arm: dict | None) -> _Group | None:
    """The group of one summary row (``None``: not on any curve)."""
    candidate, name = row["candidate"], row["arm"]
    if recipe == "moil" and candidate.startswith("student/"):
        student = next((s for s in (arm or {}).get("students", []) if s.get("name") == candidate[8:]), None)
        if student is None:  # results without the student's config: a point of its own
            return _Group(("student", name, candidate), f"{name} · {candidate[8:]}", None, (), False)
        kept = _without(student, STUDENT_SIZE_FIELDS)
        shown = tuple(sorted((k, v) for k, v in _without(kept, ("approx", *_REFIT_FIELDS)).items()))
        base = f"{name} · {student.get('approx', 'hybrid')}{_refit(student)}"
        return _Group(("student", name, _frozen(kept)), base, ("student", name), shown, False)
    if recipe == "moil" and candidate == "teacher":
        return _Group(("teacher", name), "teacher (= full fine-tuning)", "teacher", (("arm", name),), True)
    if recipe == "moil" or not row["primary"]:
        return None
    label = RECIPE_LABELS.get(recipe, recipe)
    if recipe == "lora":
        label += f" ({(arm or {}).get('approx', 'lowrank')})"
    if arm is None:
        return _Group(("arm", name), f"{label} · {name}", None, (), recipe == "full")
    kept = _without(arm, ARM_SIZE_FIELDS + MOIL_ONLY_FIELDS)
    shown = tuple(sorted((k, v) for k, v in _without(kept, ("recipe", "approx")).items()))
    return _Group(("arm", _frozen(kept)), label, ("arm", label), shown, recipe == "full")


def _labels(groups: list[_Group]) -> list[str]:
    """Each group's base name plus the fields whose values differ within its family."""
    labels = []
    for g in groups:
        family = [h for h in groups if h.family is not None and h.family == g.family]
        names = {k for h in family for k, _ in h.fields}
        differing = sorted(k for k in names if len({_frozen(dict(h.fields).get(k, "—")) for h in family}) > 1)
        own = dict(g.fields)
        extra = [f"{k} {_show(own[k])}" for k in differing if k in own]
        labels.append(", ".join([g.base, *extra]))
    unique = []
    for i, label in enumerate(labels):  # still alike (fields absent on one side): number them
        twins = [j for j, other in enumerate(labels) if other == label]
        unique.append(label if len(twins) == 1 else f"{label} ({twins.index(i) + 1})")
    return unique


def size_curves(results: dict[str, Any], task: str) -> list[Curve]:
    """The stored-size curves of ``task`` in ``results`` (a ``results.json`` as a dict).

    Args:
      results: with ``summary`` (rows: task, arm, candidate, primary, test_mean, test_std,
        seeds, stored_parameters), ``runs`` (each with arm and recipe) and, optionally,
        ``config.arms`` (the arms' config tables; without one an arm is a curve of its own).
      task: the task whose rows are grouped.

    Returns:
      One :class:`Curve` per method, in the order its first row appears in the summary;
      rows without a test score are left out.
    """
    arms = {a.get("name"): a for a in results.get("config", {}).get("arms", [])}
    recipes = {r["arm"]: r["recipe"] for r in results.get("runs", []) if "recipe" in r}
    found: dict[Any, tuple[_Group, list[dict]]] = {}
    for row in results["summary"]:
        if row["task"] != task or row["test_mean"] is None:
            continue
        arm = arms.get(row["arm"])
        recipe = recipes.get(row["arm"], (arm or {}).get("recipe", "moil"))
        group = _group(row, recipe, arm)
        if group is not None:
            found.setdefault(group.key, (group, []))[1].append(row)
    groups = [g for g, _ in found.values()]
    curves = []
    for label, (group, rows) in zip(_labels(groups), found.values()):
        rows = sorted(rows, key=lambda r: (r["stored_parameters"], r["test_mean"]))
        curves.append(Curve(
            label=label,
            points=tuple((r["stored_parameters"], r["test_mean"], r["test_std"], r["seeds"]) for r in rows),
            sources=tuple((r["arm"], r["candidate"]) for r in rows),
            reference=group.reference,
        ))
    return curves
