"""The imitation half of MoIL: momentum targets of a teacher, and students that follow them.

:class:`Imitation` is built once per backbone from the :class:`~moil.recipes.Student`
specs; it holds no tensors. Its state holds them::

    init(teacher, base, *, seed)    -> ImitationState         targets = W, fresh students
    update(state, teacher, base)    -> (state, metrics)       W̄ ← m W̄ + (1−m) W; θ follows W̄
    follow(state, targets, base)    -> (state, metrics)       θ follows given targets
    finalize(state, base, targets)  -> state                  closed-form final fits

It reads the teacher's weights and nothing else — no data, no forward pass — so it can
watch any full fine-tuning run: moil's own (:class:`~moil.recipes.MoIL`) or another.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, NamedTuple

import attrs
from torch import Tensor

from moil.approx import SEP, Adapter
from moil.momentum import MomentumState, MomentumTarget
from moil.optim import AdamState, AdamW
from moil.recipes.student import Student, student_seed
from moil.recipes.task_step import check_all_finite
from moil.solvers.fit_only import FitOnly, check_fit_only
from moil.subnormals import flush_subnormals

__all__ = ["Follower", "Imitation", "ImitationState"]


class ImitationState(NamedTuple):
    """``step``: updates done; ``targets``: ``{"m0": MomentumState, …}``, one per distinct
    schedule (empty when the targets are given); ``students``: ``{name: adapter params}``;
    ``student_opts``: ``{name: AdamState}``."""

    step: int
    targets: dict[str, MomentumState]
    students: dict[str, dict[str, Tensor]]
    student_opts: dict[str, AdamState]


def owners_keep(owners: set[str]):
    """``key -> bool``: whether a ``"<owner>::<name>"`` key belongs to one of ``owners``."""
    return lambda key: key.rpartition(SEP)[0] in owners


@attrs.frozen(eq=False)
class Follower:
    """One student, resolved for one backbone: its adapter, optimiser, solver and target."""

    adapter: Adapter
    optimizer: AdamW
    solver: Any
    target: str
    refit: Any = None
    refit_every: int | None = None
    final_fit: bool = False

    def follow(self, params, opt, base, target, step: int):
        """One solver update (and a refit when due): new params, opt state, metrics."""
        params, opt, metrics = self.solver.update(self.adapter, base, params, opt, self.optimizer, target, step)
        if self.refit_every and (step + 1) % self.refit_every == 0:
            params = self.refit.fit(self.adapter, base, target, params)
        return params, opt, metrics


@attrs.frozen(eq=False)
class Imitation:
    """Students following momentum targets.

    Attributes:
      momenta: ``{"m0": MomentumTarget, …}`` — one per distinct schedule, in student order.
      followers: ``{name: Follower}``.
    """

    momenta: Mapping[str, MomentumTarget]
    followers: Mapping[str, Follower]
    #: The teacher keys this imitation reads (``None``: all); set by :meth:`shard`.
    keys: frozenset[str] | None = None
    #: The whole imitation this one is a rank's part of (``None``: it is whole).
    parent: Imitation | None = None

    @classmethod
    def build(
        cls,
        students: Mapping[str, Student],
        backbone: Any,
        *,
        momentum: Any,
        optimizer: AdamW,
        solver: Any,
        target: str | None = None,
    ) -> Imitation:
        """Resolve each student's defaults (the recipe's momentum, optimiser and solver).

        ``target`` names one given target for every student (no momentum: ``momenta``
        stays empty and :meth:`follow` receives the targets).
        """
        names: dict[Any, str] = {}
        followers = {}
        for name, s in students.items():
            if target is None:
                schedule = momentum if s.momentum is None else s.momentum
                which = names.setdefault(schedule, f"m{len(names)}")
            else:
                which = target
            opt = optimizer if s.lr is None else attrs.evolve(optimizer, lr=s.lr)
            adapter, follows = s.adapter(backbone), s.solver or solver
            if isinstance(follows, FitOnly):  # the recipe's solver, too
                check_fit_only(f"student {name!r}", s.refit, s.final_fit, s.lr)
            if callable(getattr(s.refit, "check", None)):  # a mismatch fails now, not after the run
                try:
                    s.refit.check(adapter)
                except (TypeError, ValueError) as err:
                    raise type(err)(f"student {name!r}: {err}") from None
            followers[name] = Follower(adapter, opt, follows, which, s.refit, s.refit_every, s.final_fit)
        return cls({n: MomentumTarget(sched) for sched, n in names.items()}, followers)

    def init(self, teacher: Mapping[str, Tensor], base: Mapping[str, Tensor], *, seed: int = 0) -> ImitationState:
        """Targets start at ``teacher``; each student fresh, seeded by ``(seed, name)``.

        A rank's part (:meth:`shard`) draws the whole state and keeps its own part, so
        every student starts exactly as on one process."""
        if self.parent is not None:
            return self.local(self.parent.init(teacher, base, seed=seed))
        students, opts = {}, {}
        for name, f in self.followers.items():
            params = f.adapter.init(base, generator=student_seed(seed, name))
            extra = sorted(set(f.adapter.merge(params, base)) - set(base))
            if extra:
                raise ValueError(
                    f"student {name!r}: {type(f.adapter.approx).__name__} adds parameters the layers "
                    f"lack ({extra[:3]}); targets without a bias need an approximation that "
                    "adds none (LowRank) or a model with biases."
                )
            # A FitOnly student takes no optimiser step: no moments to keep.
            students[name], opts[name] = params, f.optimizer.init({} if isinstance(f.solver, FitOnly) else params)
        targets = {m: mt.init(teacher) for m, mt in self.momenta.items()}
        return ImitationState(0, targets, students, opts)

    def update(
        self, state: ImitationState, teacher: Mapping[str, Tensor], base: Mapping[str, Tensor]
    ) -> tuple[ImitationState, dict[str, float]]:
        """``W̄ ← m W̄ + (1−m) W`` for every target, then every student follows its target."""
        if self.keys is not None:
            teacher = {k: v for k, v in teacher.items() if k in self.keys}
        metrics = {f"momentum/{m}": mt.momentum(state.targets[m]) for m, mt in self.momenta.items()}
        with flush_subnormals():  # follow flushes each student's update itself
            targets = {m: mt.update(state.targets[m], teacher) for m, mt in self.momenta.items()}
        state, followed = self.follow(state._replace(targets=targets), {m: t.target for m, t in targets.items()}, base)
        return state, {**metrics, **followed}

    def follow(
        self, state: ImitationState, targets: Mapping[str, Mapping[str, Tensor]], base: Mapping[str, Tensor]
    ) -> tuple[ImitationState, dict[str, float]]:
        """Each student takes its solver's update towards ``targets[its target]``.

        Raises:
          FloatingPointError: a student's loss or distance is NaN/inf (nothing is changed).
        """
        students, opts, raw = {}, {}, {}
        for name, f in self.followers.items():
            with flush_subnormals():  # tiny imitation gradients: see moil.subnormals
                params, opt, m = f.follow(state.students[name], state.student_opts[name], base, targets[f.target], state.step)
            raw.update({f"student {name!r} {key}": (f"{key}/{name}", value) for key, value in m.items()})
            students[name], opts[name] = params, opt
        read = check_all_finite({what: value for what, (_, value) in raw.items()}, state.step)
        metrics = {key: read[what] for what, (key, _) in raw.items()}
        return state._replace(step=state.step + 1, students=students, student_opts=opts), metrics

    # -- split by target over ranks (moil.distributed.sharding) ------------------
    def shard(self, targets: Collection[str]) -> Imitation:
        """The part of this imitation that imitates ``targets`` only (layer names; every
        sharing group whole): momentum targets of their weights and biases, students
        restricted to them; a student with none of them is left out."""
        owned = set(targets)
        followers = {}
        for name, f in self.followers.items():
            mine = tuple(t for t in f.adapter.targets if t in owned)
            if mine:
                followers[name] = attrs.evolve(f, adapter=attrs.evolve(f.adapter, targets=mine))
        keys = frozenset(f"{t}.{p}" for t in owned for p in ("weight", "bias"))
        return Imitation(self.momenta, followers, keys, self)

    def local(self, state: ImitationState) -> ImitationState:
        """This part's slice of a whole state (tensors shared, not copied)."""
        def part(tree: Mapping[str, Tensor], keep) -> dict[str, Tensor]:
            return {k: v for k, v in tree.items() if keep(k)}

        targets = {m: t._replace(target=part(t.target, self.keys.__contains__)) for m, t in state.targets.items()}
        students, opts = {}, {}
        for name, f in self.followers.items():
            owners = set(f.adapter.targets) | set(f.adapter.groups())
            mine = owners_keep(owners)
            students[name] = part(state.students[name], mine)
            o = state.student_opts[name]
            opts[name] = o._replace(exp_avg=part(o.exp_avg, mine), exp_avg_sq=part(o.exp_avg_sq, mine))
        return state._replace(targets=targets, students=students, student_opts=opts)

    @staticmethod
    def join(parts: list[ImitationState]) -> ImitationState:
        """The whole state from every rank's part (rank order); inverse of :meth:`local`."""
        def union(trees) -> dict[str, Tensor]:
            return {k: v for tree in trees for k, v in tree.items()}

        first = parts[0]
        targets = {m: t._replace(target=union(p.targets[m].target for p in parts)) for m, t in first.targets.items()}
        names = [n for p in parts for n in p.students]
        students, opts = {}, {}
        for name in dict.fromkeys(names):
            have = [p for p in parts if name in p.students]
            students[name] = union(p.students[name] for p in have)
            o = have[0].student_opts[name]
            opts[name] = o._replace(
                exp_avg=union(p.student_opts[name].exp_avg for p in have),
                exp_avg_sq=union(p.student_opts[name].exp_avg_sq for p in have),
            )
        return first._replace(targets=targets, students=students, student_opts=opts)

    def finalize(
        self, state: ImitationState, base: Mapping[str, Tensor], targets: Mapping[str, Mapping[str, Tensor]] | None = None
    ) -> ImitationState:
        """Each ``final_fit`` student jumps to its closed-form fit of its target."""
        targets = self.targets(state, targets)
        students = dict(state.students)
        for name, f in self.followers.items():
            if f.final_fit:
                students[name] = f.refit.fit(f.adapter, base, targets[f.target], students[name])
        return state._replace(students=students)

    def targets(self, state: ImitationState, given: Mapping[str, Mapping[str, Tensor]] | None = None) -> dict:
        """``{target name: tensors}``: the momentum targets, or the ``given`` ones."""
        return dict(given) if given is not None else {m: t.target for m, t in state.targets.items()}

    def students_of(self, state: ImitationState) -> dict[str, tuple[Adapter, dict[str, Tensor]]]:
        return {n: (f.adapter, state.students[n]) for n, f in self.followers.items()}

    def merged(self, state: ImitationState, base: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
        """``{name: Ŵ, b̂ of every target}`` — each student merged into plain tensors."""
        return {n: f.adapter.merge(state.students[n], base) for n, f in self.followers.items()}

    def imitated(self, state: ImitationState, given: Mapping[str, Mapping[str, Tensor]] | None = None) -> dict:
        """``{student: the target tensors it imitates}``."""
        targets = self.targets(state, given)
        return {n: targets[f.target] for n, f in self.followers.items()}

    def num_stored(self, base: Mapping[str, Tensor]) -> dict[str, int]:
        """``{student: stored adapter parameters}`` (shared ones counted once)."""
        return {n: f.adapter.num_params(base) for n, f in self.followers.items()}
