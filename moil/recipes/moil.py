"""The MoIL recipe: full fine-tuning of the teacher, watched by momentum targets and students."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import attrs
from torch import Tensor

from moil.distributed.sharding import collective_update, gather_parts, owned_targets
from moil.distributed.world import current
from moil.momentum import MomentumTarget
from moil.optim import AdamW
from moil.recipes.finetune import FineTuneState, FullFineTune
from moil.recipes.imitation import Imitation, ImitationState
from moil.recipes.parts import PerBackbone
from moil.recipes.protocol import dense_size, head_size
from moil.recipes.student import Student, as_students, check_momenta_fit_run
from moil.recipes.task_step import TaskLoss, default_optimizer, positive_scale
from moil.schedules import HalfLife, bind_fields
from moil.solvers import Gradient

__all__ = ["MoIL", "MoILState"]


class MoILState(NamedTuple):
    """``task``: the teacher's state (as :class:`FullFineTune`'s); ``imitation``: momentum
    targets and students. The properties name the parts the method speaks of."""

    task: FineTuneState
    imitation: ImitationState

    step = property(lambda self: self.task.step, doc="Steps done.")
    teacher = property(lambda self: self.task.teacher, doc='``{"<t>.weight" (out, in), "<t>.bias" (out,)}``.')
    heads = property(lambda self: self.task.heads, doc="Task-head parameters.")
    teacher_opt = property(lambda self: self.task.teacher_opt)
    head_opt = property(lambda self: self.task.head_opt)
    targets = property(lambda self: self.imitation.targets, doc='``{"m0": MomentumState, …}``.')
    students = property(lambda self: self.imitation.students, doc="``{name: adapter params}``.")
    student_opts = property(lambda self: self.imitation.student_opts)


def _momentum(instance, attribute, value) -> None:
    MomentumTarget(value)  # a number or schedule with values in [0, 1]


@attrs.frozen
class MoIL:
    r"""Momentum imitation learning (Luo et al., TPAMI 2025).

    Each step, with teacher ``W`` (initialised to ``W0``), heads ``h``, momentum target
    ``W̄`` and student ``θ`` per student:

    1. ``g = ∇_{W,h} task_loss(f(W, h; batch))`` — the teacher is in the forward;
    2. ``W̄ ← m_t W̄ + (1 − m_t) W`` (no gradient);
    3. ``θ ← solver(θ; imitation(Ŵ(θ), W̄))`` — the student never sees data;
    4. ``(W, h) ← AdamW(g)``.

    Without students this is :class:`FullFineTune`; the students never influence the
    teacher, so any number train in one run
    (``students={"r8": Hybrid(8), "r16": Student(LowRank(16), momentum=HalfLife(50))}``)
    and each ends exactly as in a run of its own.

    Args:
      task_loss: ``(outputs, batch) -> scalar`` (see :mod:`moil.objectives`).
      students: an approximation, a :class:`Student`, or ``{name: either}``.
      momentum: default schedule ``step -> m``; default a half-life of a tenth of the run.
        (The reference's constant 0.9996 has a half-life of ≈1733 steps: a shorter run
        warns that its target would stay near ``W0``.)
      optimizer: teacher optimiser (reference AdamW over the run, :func:`default_optimizer`).
      head_lr_scale: head learning rate = ``head_lr_scale`` × teacher's.
      student_optimizer: student optimiser (default: the teacher's).
      solver: default per-step imitation solver (reference ``Gradient(steps=1)``).
    """

    task_loss: TaskLoss
    students: Mapping[str, Student] = attrs.field(converter=as_students)
    momentum: Any = attrs.field(factory=lambda: HalfLife(fraction=0.1), validator=_momentum)
    optimizer: AdamW = attrs.field(factory=default_optimizer)
    head_lr_scale: float = attrs.field(default=1.0, validator=positive_scale)
    student_optimizer: AdamW | None = None
    solver: Any = attrs.field(factory=Gradient)
    _parts: PerBackbone = attrs.field(factory=PerBackbone, init=False, eq=False, repr=False)
    _shards: PerBackbone = attrs.field(factory=PerBackbone, init=False, eq=False, repr=False)

    @property
    def primary(self) -> str:
        return f"student/{next(iter(self.students))}"

    @property
    def teacher(self) -> FullFineTune:
        """The teacher's recipe: full fine-tuning under this optimiser."""
        return FullFineTune(self.task_loss, self.optimizer, self.head_lr_scale)

    def parts(self, backbone: Any) -> tuple[FullFineTune, Imitation]:
        """The teacher's recipe and the imitation, built once per backbone.

        Under ``torchrun`` (inside :func:`moil.distributed.active`) the imitation is this
        rank's part: its own targets' momentum state and students
        (:func:`moil.distributed.owned_targets`); the teacher is whole on every rank."""
        def build(bb):
            imitation = Imitation.build(
                self.students, bb, momentum=self.momentum,
                optimizer=self.student_optimizer or self.optimizer, solver=self.solver,
            )
            return self.teacher, imitation

        teacher, imitation = self._parts.get(backbone, build)
        world = current()
        if world.size == 1:
            return teacher, imitation
        shards = self._shards.get(backbone, lambda bb: {})
        if world not in shards:
            adapters = [f.adapter for f in imitation.followers.values()]
            shards[world] = imitation.shard(owned_targets(adapters, backbone.base(), world))
        return teacher, shards[world]

    def gather_state(self, state: MoILState, backbone: Any, *, dst: int | None = None) -> MoILState | None:
        """The whole state from every rank's part (on rank ``dst``, or all for ``None``)."""
        parts = gather_parts(state.imitation, current(), dst)
        return None if parts is None else state._replace(imitation=Imitation.join(parts))

    def local_state(self, state: MoILState, backbone: Any) -> MoILState:
        """This rank's part of a whole state (e.g. a checkpoint's)."""
        _, imitation = self.parts(backbone)
        return state._replace(imitation=imitation.local(state.imitation)) if imitation.parent else state

    def for_run(self, steps: int) -> MoIL:
        """Schedules bound to a run of ``steps``; warns (:class:`~moil.momentum.MomentumWarning`)
        for a momentum whose target would stay mostly at ``W0`` over the run."""
        bound = bind_fields(self, steps)
        check_momenta_fit_run(bound.students, bound.momentum, steps)
        return bound

    # -- the recipe protocol ---------------------------------------------------
    def init(self, backbone: Any, *, seed: int = 0) -> MoILState:
        """Teacher = W0 (a copy), targets = W0, fresh students."""
        teacher, imitation = self.parts(backbone)
        task = teacher.init(backbone, seed=seed)
        return MoILState(task, imitation.init(task.teacher, backbone.base(), seed=seed))

    def step(self, state: MoILState, backbone: Any, batch: Mapping[str, Tensor]) -> tuple[MoILState, dict]:
        """The four steps of the class docstring."""
        teacher, imitation = self.parts(backbone)
        grads, metrics = teacher.gradients(state.task, backbone, batch)                    # 1
        update = lambda: imitation.update(state.imitation, state.teacher, backbone.base())
        world = current()
        followed, imitated = update() if world.size == 1 else collective_update(update, world)  # 2, 3
        task = teacher.apply(state.task, grads)                                            # 4
        return MoILState(task, followed), {**metrics, **imitated}

    def finalize(self, state: MoILState, backbone: Any) -> MoILState:
        """Apply each student's closed-form ``refit`` once if ``final_fit``."""
        _, imitation = self.parts(backbone)
        return state._replace(imitation=imitation.finalize(state.imitation, backbone.base()))

    def candidates(self, state: MoILState, backbone: Any) -> dict[str, dict[str, Tensor]]:
        """``student/<name>`` (merged), ``teacher`` and ``target/<m>`` — the reference reports all."""
        _, imitation = self.parts(backbone)
        out = {f"student/{n}": {**w, **state.heads} for n, w in imitation.merged(state.imitation, backbone.base()).items()}
        out["teacher"] = {**state.teacher, **state.heads}
        for name, t in state.targets.items():  # a bf16 teacher's float32 target, in the model's dtype
            target = {k: w.to(state.teacher[k].dtype) for k, w in t.target.items()}
            out[f"target/{name}"] = {**target, **state.heads}
        return out

    def students_of(self, state: MoILState, backbone: Any) -> dict[str, tuple[Any, dict[str, Tensor]]]:
        return self.parts(backbone)[1].students_of(state.imitation)

    def stored_parameters(self, state: MoILState, backbone: Any) -> dict[str, int]:
        heads, dense = head_size(backbone), dense_size(backbone)
        sizes = self.parts(backbone)[1].num_stored(backbone.base())
        out = {f"student/{n}": size + heads for n, size in sizes.items()}
        out["teacher"] = dense + heads
        out.update({f"target/{m}": dense + heads for m in state.targets})
        return out

    def imitation_targets(self, state: MoILState, backbone: Any) -> dict[str, dict[str, Tensor]]:
        return self.parts(backbone)[1].imitated(state.imitation)
