"""Checks that a :class:`~moil.backbones.Backbone` keeps its contract — for tests and
for users wiring their own model through :func:`~moil.backbones.from_model`.

* :func:`snapshot` / :func:`assert_untouched` — the model is never mutated
  (values, storage, ``requires_grad`` and train/eval modes);
* :func:`reference_outputs` — what the backbone *should* return for given
  overrides, computed the slow way: a deep copy of the model with the overrides
  loaded by ``load_state_dict``, called directly;
* :func:`input_problem` / :func:`check_inputs`, :func:`layout_problem`, :func:`pixel_problem` —
  what is wrong with a batch for a model (re-exported from :mod:`moil.backbones.input_checks`);
* :func:`record_inputs` — the input each linear layer received (to verify that a
  sharing group's members read one input).
"""

from __future__ import annotations

import copy
from typing import Callable, Mapping

import attrs
import torch
from torch import Tensor, nn

from moil.backbones.base import Backbone
from moil.backbones.input_checks import check_inputs, input_problem, layout_problem, pixel_problem

__all__ = ["Snapshot", "assert_untouched", "check_inputs", "input_problem", "layout_problem", "pixel_problem",
           "record_inputs", "reference_outputs", "snapshot"]


@attrs.frozen(eq=False)
class Snapshot:
    """A model's tensors (cloned), their storage pointers, grad flags and module modes."""

    values: dict[str, Tensor]
    pointers: dict[str, int]
    requires_grad: dict[str, bool]
    training: dict[str, bool]


def snapshot(model: nn.Module) -> Snapshot:
    """Record everything :func:`assert_untouched` compares."""
    tensors = dict(model.state_dict(keep_vars=True))
    return Snapshot(
        values={k: v.detach().clone() for k, v in tensors.items()},
        pointers={k: v.data_ptr() for k, v in tensors.items()},
        requires_grad={n: p.requires_grad for n, p in model.named_parameters()},
        training={n: m.training for n, m in model.named_modules()},
    )


def assert_untouched(model: nn.Module, before: Snapshot) -> None:
    """Raise ``AssertionError`` naming the first difference from ``before``."""
    now = snapshot(model)
    if now.values.keys() != before.values.keys():
        raise AssertionError(f"state_dict keys changed: {sorted(now.values.keys() ^ before.values.keys())}")
    for k, v in before.values.items():
        if not torch.equal(now.values[k], v):
            raise AssertionError(f"{k!r} changed value")
        if now.pointers[k] != before.pointers[k]:
            raise AssertionError(f"{k!r} moved to new storage")
    if now.requires_grad != before.requires_grad:
        raise AssertionError("requires_grad flags changed")
    if now.training != before.training:
        raise AssertionError("a module's train/eval mode changed")


def reference_outputs(
    backbone: Backbone, overrides: Mapping[str, Tensor], batch: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Outputs of a deep copy of the model with ``overrides`` loaded into it.

    ``overrides`` use the backbone's keys (``"<target>.weight"``…); they are
    translated to the model's names and copied in with ``load_state_dict`` on the
    copy. The user's model is not touched.
    """
    model = copy.deepcopy(backbone.model)
    full = backbone.resolve(overrides)
    state = model.state_dict()
    # resolve() keys are the model's own names; the state_dict may list tied ones twice.
    changed = {k: full[k].detach() for k in state if k in full}
    model.load_state_dict({**state, **changed})
    with torch.no_grad():
        out = model(**backbone.inputs(batch))
    result = dict(backbone.outputs(out, batch))
    own = dict(model.named_parameters())
    for key, name in backbone.passthrough.items():
        result[key] = own[name].detach()
    return result


def record_inputs(
    model: nn.Module, names: list[str], run: Callable[[], object]
) -> dict[str, Tensor]:
    """``{name: first positional input}`` of the modules ``names`` during ``run()``.

    Hooks are registered on ``model`` and removed afterwards: pass a *copy* of the
    user's model. A module called twice keeps its first input.
    """
    seen: dict[str, Tensor] = {}
    modules = dict(model.named_modules())
    handles = []
    for name in names:
        def hook(module, args, name=name):
            seen.setdefault(name, args[0])
        handles.append(modules[name].register_forward_pre_hook(hook))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return seen
