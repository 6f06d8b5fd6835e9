"""MoIL's imitation watching any training loop: a Hugging Face ``Trainer``, an
``accelerate`` loop, your own ``torch.optim`` loop.

The student never enters the forward pass; it reads the teacher's weights and nothing
else. So the imitation half of MoIL can ride on any full fine-tuning run:

    observer = ImitationObserver({"hybrid": Hybrid(8)}, targets=["query", "key", "value"])
    state = observer.init(model)                       # copies W0 once
    for batch in loader:
        loss = task(model(**batch)); loss.backward()
        state, metrics = observer.update(state, model)  # between backward and step
        optimizer.step(); optimizer.zero_grad()
    state = observer.finalize(state, model)

Called between ``backward`` and ``optimizer.step()`` (a ``TrainerCallback``'s
``on_pre_optimizer_step``), the target and students see the weights the gradient was
taken at — exactly :class:`moil.recipes.MoIL`'s order, so the students equal the
recipe's on the same batches and teacher optimiser. The model, its parameters and the
optimiser are only read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import attrs
from torch import Tensor, nn

from moil.backbones import Backbone, from_model
from moil.backbones.targets import Patterns
from moil.momentum import MomentumTarget
from moil.optim import AdamW
from moil.recipes.imitation import Imitation, ImitationState
from moil.recipes.parts import PerBackbone
from moil.recipes.student import Student, as_students, check_momenta_fit_run
from moil.recipes.task_step import clone, default_optimizer
from moil.schedules import HalfLife, bind_fields
from moil.solvers import Gradient

__all__ = ["ImitationObserver", "ObserverState", "unwrap"]


class ObserverState(NamedTuple):
    """``base``: ``W0``/``b0`` of every target, copied at :meth:`ImitationObserver.init`;
    ``imitation``: momentum targets and students (see :class:`~moil.recipes.ImitationState`)."""

    base: dict[str, Tensor]
    imitation: ImitationState

    step = property(lambda self: self.imitation.step, doc="Updates done.")
    targets = property(lambda self: self.imitation.targets)
    students = property(lambda self: self.imitation.students)
    student_opts = property(lambda self: self.imitation.student_opts)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside ``DistributedDataParallel`` / ``DataParallel`` / a compiled
    module (their ``.module`` / ``._orig_mod``); any other module as it is."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module) or inner is model:
            return model
        model = inner


def _momentum(instance, attribute, value) -> None:
    MomentumTarget(value)


@attrs.frozen
class ImitationObserver:
    r"""Momentum targets of a live model's target layers, and students that follow them.

    Per :meth:`update`, with ``W`` the model's current weights: ``W̄ ← m W̄ + (1 − m) W``,
    then each student takes its solver's step towards ``W̄`` (MoIL's steps 2 and 3).

    Args:
      students: an approximation, a :class:`~moil.recipes.Student`, or ``{name: either}``.
      targets: the adapted linear layers, as patterns for
        :func:`moil.backbones.select_targets` (e.g. ``["query", "key", "value"]``).
      momentum: default momentum schedule (a tenth of the run as half-life; bind the run
        length with :func:`moil.schedules.bind_run`, which the Trainer callback does).
      optimizer: the students' optimiser (reference AdamW over the run).
      solver: the per-update solver (reference ``Gradient(steps=1)``).
      exclude: patterns of linear layers to leave out.
    """

    students: Mapping[str, Student] = attrs.field(converter=as_students)
    targets: Patterns = attrs.field(kw_only=True)
    momentum: Any = attrs.field(factory=lambda: HalfLife(fraction=0.1), kw_only=True, validator=_momentum)
    optimizer: AdamW = attrs.field(factory=default_optimizer, kw_only=True)
    solver: Any = attrs.field(factory=Gradient, kw_only=True)
    exclude: Patterns = attrs.field(default=(), kw_only=True)
    _parts: PerBackbone = attrs.field(factory=PerBackbone, init=False, eq=False, repr=False)

    def backbone(self, model: nn.Module) -> Backbone:
        """The model's targets as a :class:`~moil.backbones.Backbone` (read only)."""
        return from_model(unwrap(model), self.targets, exclude=self.exclude)

    def parts(self, model: nn.Module) -> tuple[Backbone, Imitation]:
        """The backbone view and the imitation, built once per model."""
        def build(m):
            bb = self.backbone(m)
            return bb, Imitation.build(self.students, bb, momentum=self.momentum,
                                       optimizer=self.optimizer, solver=self.solver)

        return self._parts.get(unwrap(model), build)

    def for_run(self, steps: int) -> ImitationObserver:
        """Schedules bound to a run of ``steps`` updates (warns for a too-slow momentum)."""
        bound = bind_fields(self, steps)
        check_momenta_fit_run(bound.students, bound.momentum, steps)
        return bound

    def _live(self, model: nn.Module) -> dict[str, Tensor]:
        return self.parts(model)[0].base()  # detached views of the current weights

    def init(self, model: nn.Module, *, seed: int = 0) -> ObserverState:
        """Copy ``W0`` once; targets start at ``W0``; students fresh, seeded by ``(seed, name)``."""
        base = clone(self._live(model))
        return ObserverState(base, self.parts(model)[1].init(base, base, seed=seed))

    def update(self, state: ObserverState, model: nn.Module) -> tuple[ObserverState, dict[str, float]]:
        """One momentum update from the model's current weights, then one solver step per student.

        Raises:
          FloatingPointError: a student's loss is NaN/inf (the state is not changed).
        """
        imitation, metrics = self.parts(model)[1].update(state.imitation, self._live(model), state.base)
        return state._replace(imitation=imitation), metrics

    def finalize(self, state: ObserverState, model: nn.Module) -> ObserverState:
        """Each ``final_fit`` student jumps to its closed-form fit of its target."""
        return state._replace(imitation=self.parts(model)[1].finalize(state.imitation, state.base))

    def students_of(self, state: ObserverState, model: nn.Module) -> dict[str, tuple[Any, dict[str, Tensor]]]:
        """``{name: (Adapter, params)}`` — for :func:`moil.export.save_student` and friends."""
        return self.parts(model)[1].students_of(state.imitation)

    def merged(self, state: ObserverState, model: nn.Module) -> dict[str, dict[str, Tensor]]:
        """``{name: {"<t>.weight": Ŵ, "<t>.bias": b̂}}`` — each student merged into plain tensors."""
        return self.parts(model)[1].merged(state.imitation, state.base)
