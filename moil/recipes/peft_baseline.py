"""Published low-rank baselines (LoRA, DoRA, PiSSA) trained through PEFT itself.

PEFT is an optional dependency, imported only when a method needs it. The
PEFT-wrapped model is a private deep copy of ``backbone.model``, cached on the
recipe; the state holds only tensors and ints, so :mod:`moil.train` checkpoints
and resumes it like any other recipe.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Mapping
from typing import Any, Literal

import attrs
import torch
from torch import Tensor, nn

from moil.approx.protocol import positive_int
from moil.export.peft import PEFT_PREFIX
from moil.optim import AdamW
from moil.precision import Autocast, autocast_forward
from moil.recipes.protocol import head_size
from moil.recipes.student import student_seed
from moil.recipes.task_step import TaskLoss, TaskState, TaskStep, default_optimizer, group, positive_scale

__all__ = ["PEFT_PREFIX", "PeftLowRank", "PeftLowRankState"]

VARIANTS = ("lora", "dora", "pissa")

NO_PEFT = (
    "PeftLowRank trains LoRA/DoRA/PiSSA through PEFT, which is not installed; run "
    "`pip install peft` (or use moil.recipes.LoRA, which needs no PEFT)."
)
NOT_LINEAR = """\
PeftLowRank: target {target!r} is {kind}, not an nn.Linear module. PEFT's LoRA
wraps nn.Linear modules; a fused "<attention>.in_proj" target (the packed q/k/v
of nn.MultiheadAttention) has no module of its own. Build the backbone with
targets that are nn.Linear layers, or use moil.recipes.LoRA."""
PISSA_RANK = (
    "PeftLowRank: variant='pissa' takes the top-r singular triplets of each target, so rank "
    "must be <= min(out, in); got rank={rank} for {target!r} of shape ({out}, {inp}). Lower "
    "the rank."
)


class PeftLowRankState(TaskState):
    """``params = {"adapter": PEFT's tensors, "heads": …}`` — PEFT names:
    ``"….lora_A.default.weight"`` ``(r, in)``, ``"….lora_B.default.weight"`` ``(out, r)``,
    DoRA's ``"….lora_magnitude_vector.default.weight"`` ``(out,)``; heads keyed as
    ``backbone.heads``."""

    __slots__ = ()
    adapter = group("adapter")
    heads = group("heads")
    adapter_opt = group("adapter", opt=True)
    head_opt = group("heads", opt=True)


def _peft():
    try:
        import peft
        import peft.helpers
        import peft.tuners.lora
    except ImportError as err:
        raise ImportError(NO_PEFT) from err
    return peft


def _optional_positive(instance, attribute, value) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if value is not None and (not number or value <= 0):
        raise ValueError(
            f"PeftLowRank: {attribute.name} must be > 0 or None, got {attribute.name}={value!r}."
        )


def _linear(backbone: Any, target: str) -> nn.Linear:
    try:
        module = backbone.model.get_submodule(target)
    except AttributeError:
        raise ValueError(NOT_LINEAR.format(target=target, kind="not a module")) from None
    if not isinstance(module, nn.Linear):
        raise ValueError(NOT_LINEAR.format(target=target, kind=f"a {type(module).__name__}"))
    return module


@attrs.frozen
class PeftLowRank:
    r"""LoRA / DoRA / PiSSA trained by PEFT on the backbone's targets: a baseline to compare with.

    For each target ``W0`` ``(out, in)`` with ``A`` ``(r, in)``, ``B`` ``(out, r)``
    and ``s = α/r``, the effective weight is

    * ``"lora"`` (Hu et al., 2021): ``W = W0 + s·B A``; ``B = 0``, ``A`` Kaiming-uniform at init;
    * ``"dora"`` (Liu et al., 2024): ``W = m ⊙ (W0 + s·B A) / ‖W0 + s·B A‖_c`` with the
      column norm ``‖·‖_c`` over inputs (one per output, ``(out,)``) and a trained
      magnitude ``m`` ``(out,)``, initialised to ``‖W0‖_c`` (so ``W = W0``); as in the
      paper and PEFT, the norm gets no gradient;
    * ``"pissa"`` (Meng et al., 2024): ``W = W_res + s·B A`` with ``B A`` initialised
      from the top-``r`` SVD ``U_r S_r V_rᵀ`` of ``W0`` (``B = U_r √(S_r/s)``,
      ``A = √(S_r/s) V_rᵀ``) and the frozen *residual* ``W_res = W0 − s·B A``. The
      frozen base of the PEFT copy is therefore not ``backbone.base()``.

    Biases stay frozen. Each step is ``(θ, h) ← AdamW(∇ task(f_PEFT(θ, h)))`` with
    ``θ`` the PEFT adapter tensors and ``h`` the heads (learning rate × ``head_lr_scale``),
    the forward being ``torch.func.functional_call`` on PEFT's own model. Compare it
    with MoIL at equal stored parameters (:meth:`num_stored`).

    The user's model is never modified: PEFT wraps a deep copy, cached on the
    recipe per (model, targets). :meth:`candidates` gives the merged dense weights,
    which the unmodified backbone reads; :meth:`to_peft` gives a PEFT model (e.g.
    for ``save_pretrained``). A PEFT adapter is not a moil :class:`~moil.approx.Adapter`,
    so :meth:`students_of` is empty.

    Args:
      task_loss: ``(outputs, batch) -> scalar``.
      rank: ``r``, the same for every target.
      variant: ``"lora"``, ``"dora"`` or ``"pissa"``.
      alpha: ``α`` (default ``r``, so ``s = 1``).
      optimizer: AdamW (reference schedule by default).
      head_lr_scale: head learning rate multiplier.

    Raises:
      ValueError: a bad argument, a target that is not an ``nn.Linear``, or a
        PiSSA rank above ``min(out, in)``.
      ImportError: PEFT is not installed (``pip install peft``).

    Example:
      >>> recipe = PeftLowRank(ImageTextMatching(), 8, variant="dora")  # doctest: +SKIP
      >>> state = moil.train.train(recipe, backbone, batches, steps=100)  # doctest: +SKIP
    """

    task_loss: TaskLoss
    rank: int = attrs.field(validator=positive_int)
    variant: Literal["lora", "dora", "pissa"] = attrs.field(default="lora", kw_only=True)
    alpha: float | None = attrs.field(default=None, kw_only=True, validator=_optional_positive)
    optimizer: AdamW = attrs.field(factory=default_optimizer, kw_only=True)
    head_lr_scale: float = attrs.field(default=1.0, kw_only=True, validator=positive_scale)
    primary = "student/student"
    task: TaskStep = attrs.field(init=False, eq=False, repr=False)
    _models: dict = attrs.field(factory=dict, init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        # Built once: the optimisers of the adapter and of the heads (at a scaled rate).
        task = TaskStep.with_heads(self.task_loss, "adapter", self.optimizer, self.head_lr_scale)
        object.__setattr__(self, "task", task)

    @variant.validator
    def _check_variant(self, attribute, value) -> None:
        if value not in VARIANTS:
            raise ValueError(
                f"PeftLowRank: variant must be one of {VARIANTS}, got variant={value!r}."
            )

    # -- the PEFT copy -----------------------------------------------------------
    def peft_config(self, backbone: Any):
        """The ``peft.LoraConfig``: the targets as one exact regex, no dropout, no bias."""
        return _peft().LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha or self.rank,
            # A str is re.fullmatch-ed by PEFT: exactly these modules, no suffix surprises.
            target_modules="(" + "|".join(re.escape(t) for t in backbone.targets) + ")",
            use_dora=self.variant == "dora",
            init_lora_weights="pissa" if self.variant == "pissa" else True,
            lora_dropout=0.0,
            bias="none",
        )

    def _wrap(self, backbone: Any, seed: int) -> nn.Module:
        peft = _peft()
        for t in backbone.targets:
            layer = _linear(backbone, t)
            if self.variant == "pissa" and self.rank > min(layer.weight.shape):
                out, inp = layer.weight.shape
                raise ValueError(PISSA_RANK.format(rank=self.rank, target=t, out=out, inp=inp))
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):  # PEFT draws A from the global RNG
            torch.manual_seed(student_seed(seed, "student").initial_seed())
            model = peft.get_peft_model(copy.deepcopy(backbone.model), self.peft_config(backbone))
        lora_layer = peft.tuners.lora.LoraLayer
        wrapped = {
            n[len(PEFT_PREFIX):] for n, m in model.named_modules() if isinstance(m, lora_layer)
        }
        if wrapped != set(backbone.targets):
            raise RuntimeError(
                f"PeftLowRank: PEFT wrapped {sorted(wrapped)[:5]}, not the backbone's targets "
                f"{list(backbone.targets)[:5]}; this PEFT version matches target_modules "
                "differently."
            )
        self._models[(id(backbone.model), backbone.targets)] = (backbone.model, model)
        return model

    def _model(self, backbone: Any) -> nn.Module:
        # The frozen part (W0, or PiSSA's residual) does not depend on the seed, so a
        # missing cache entry (e.g. candidates of a loaded state) is rebuilt with seed 0.
        hit = self._models.get((id(backbone.model), backbone.targets))
        if hit is not None and hit[0] is backbone.model:
            return hit[1]
        return self._wrap(backbone, 0)

    def _forward(self, model: nn.Module, backbone: Any, adapter, heads, batch) -> dict[str, Tensor]:
        trained = {**adapter, **{PEFT_PREFIX + h: v for h, v in heads.items()}}
        full = {
            n: t.detach()
            for n, t in itertools.chain(model.named_parameters(), model.named_buffers())
            if n not in trained
        }
        full.update(trained)
        # PEFT's optional DoRA cache would keep a ‖W‖_c computed from other tensors.
        with _peft().helpers.DoraCaching(enabled=False):
            if isinstance(backbone, Autocast):  # bf16/fp16 forward, as moil.train sets it
                device = next(iter(adapter.values())).device.type
                return autocast_forward(lambda: self._call(model, backbone, full, batch), backbone.dtype, device)
            return self._call(model, backbone, full, batch)

    @staticmethod
    def _call(model: nn.Module, backbone: Any, full: dict[str, Tensor], batch) -> dict:
        out = torch.func.functional_call(
            model, full, args=(), kwargs=backbone.inputs(batch), tie_weights=True, strict=False
        )
        result = dict(backbone.outputs(out, batch))
        for key, name in backbone.passthrough.items():
            result[key] = full[PEFT_PREFIX + name]
        return result

    # -- the recipe --------------------------------------------------------------
    def init(self, backbone: Any, *, seed: int = 0) -> PeftLowRankState:
        model = self._wrap(backbone, seed)
        adapter = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return PeftLowRankState(*self.task.init({"adapter": adapter, "heads": backbone.head_params()}))

    def step(
        self, state: PeftLowRankState, backbone: Any, batch: Mapping[str, Tensor]
    ) -> tuple[PeftLowRankState, dict]:
        model = self._model(backbone)

        def forward(tree, b):
            return self._forward(model, backbone, tree["adapter"], tree["heads"], b)

        return self.task.step(state, forward, batch)

    def finalize(self, state: PeftLowRankState, backbone: Any) -> PeftLowRankState:
        return state

    def candidates(self, state: PeftLowRankState, backbone: Any) -> dict[str, dict[str, Tensor]]:
        """``{"student/student": overrides}``: PEFT's merged ``"<t>.weight"`` ``(out, in)``
        (the full effective weight, PiSSA's residual included) and bias ``"<t>.bias"``
        ``(out,)`` of every target, plus the heads — for the *unmodified* backbone.

        Each target's PEFT layer is deep-copied, loaded with the state and merged by
        PEFT's own ``merge`` (what ``merge_and_unload`` runs per layer)."""
        model, out = self._model(backbone), {}
        with torch.no_grad():
            for t in backbone.targets:
                prefix = f"{PEFT_PREFIX}{t}."
                layer = copy.deepcopy(model.get_submodule(prefix[:-1]))
                for name, value in state.adapter.items():
                    if name.startswith(prefix):
                        layer.get_parameter(name[len(prefix):]).copy_(value)
                layer.merge(safe_merge=True)
                base = layer.get_base_layer()
                out[f"{t}.weight"] = base.weight.detach().clone()
                if base.bias is not None:
                    out[f"{t}.bias"] = base.bias.detach().clone()
        return {"student/student": {**out, **state.heads}}

    def to_peft(self, state: PeftLowRankState, backbone: Any) -> nn.Module:
        """A new ``peft.PeftModel`` (a deep copy) holding the state's adapter and heads."""
        model = copy.deepcopy(self._model(backbone))
        heads = {PEFT_PREFIX + h: v for h, v in state.heads.items()}
        with torch.no_grad():
            for name, value in {**state.adapter, **heads}.items():
                model.get_parameter(name).copy_(value)
        return model

    def students_of(self, state: PeftLowRankState, backbone: Any) -> dict:
        """Empty: a PEFT adapter is not a moil :class:`~moil.approx.Adapter` (see ``to_peft``)."""
        return {}

    def stored_parameters(self, state: PeftLowRankState, backbone: Any) -> dict[str, int]:
        return {"student/student": self.num_stored(backbone) + head_size(backbone)}

    def imitation_targets(self, state: PeftLowRankState, backbone: Any) -> dict:
        return {}

    def num_stored(self, backbone: Any) -> int:
        """Stored adapter parameters: ``Σ_t r·(in + out)``, plus ``out`` per target for DoRA."""
        total = 0
        for t in backbone.targets:
            out, inp = _linear(backbone, t).weight.shape
            total += self.rank * (inp + out) + (out if self.variant == "dora" else 0)
        return total
