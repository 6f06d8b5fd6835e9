"""A :class:`Backbone`: an unmodified model seen as frozen tensors, targets, heads and a pure forward.

``backbone(params, batch)`` is
``torch.func.functional_call(model, {**detached, **params}, kwargs=inputs(batch))``
followed by ``outputs(output, batch)``: ``params`` override the effective target
weights (``"<target>.weight"``/``".bias"``, e.g. from ``Adapter.merge``) and the
heads; every other tensor is the model's own, detached, so ``torch.func.grad``
differentiates only the overrides and no graph is built for frozen weights.
The model is only read: no parameter, flag, mode or attribute of it is changed.
"""

from __future__ import annotations

import difflib
import itertools
from typing import Any, Callable, Literal, Mapping

import attrs
import torch
from torch import Tensor, nn

from moil.approx import TRANSFORM_KEYS, Adapter, Approximation, Sharing
from moil.backbones.calls import Logits, forward_inputs
from moil.backbones.input_checks import input_problem, pixel_problem
from moil.backbones.targets import Linear, Patterns, linear_layers, select_params, select_targets

__all__ = ["Backbone", "from_model", "auto_sharing"]

BIAS_FREE = """\
Backbone: override {key!r} is a bias, but target {target!r} has no bias (a linear layer
with bias=False, shape ({out}, {inp})). Transform and Hybrid input-side approximations
add a bias b̂ = W0(U a + c) + b0, which this layer has no parameter for. Use
moil.approx.LowRank (it leaves the bias alone), or a model whose target layers have biases."""

UNKNOWN_KEY = """\
Backbone: override {key!r} is not a parameter of {model}. Overrides are
"<target>.weight"/"<target>.bias" of the targets or parameter names from
model.named_parameters() (e.g. the heads {heads}). {close}"""


@attrs.frozen(eq=False)
class Backbone:
    r"""An unmodified model with named targets, heads and a pure functional forward.

    Attributes:
      model: the user's task model (e.g. ``ViltForQuestionAnswering``); never mutated.
      targets: module paths of the adapted linear layers (see :mod:`moil.backbones.targets`).
      heads: parameter names of the task heads, trained by the task loss.
      sharing: how targets that read one input share parameters
        (``Sharing(TRANSFORM_KEYS)`` groups each block's q/k/v), or ``None``.
      inputs: ``batch → kwargs`` for ``model(**kwargs)``; labels are not passed.
      outputs: ``(model output, batch) → dict`` with moil's keys (``"itm_logits"``
        ``(B, 2)``, ``"vqa_logits"`` ``(B, A)``, ``"pair_logits"`` ``(B, 2)``,
        ``"image_embeds"``/``"text_embeds"`` ``(B, D)``, ``"logit_scale"`` ``()``).
      passthrough: output key → parameter name, copied into the outputs from the
        parameters used (CLIP's ``logit_scale``, which its output does not return).

    Raises:
      ValueError: a target is not a linear layer of the model, a head is not a
        parameter, a head is a target tensor, or a sharing group mixes input widths.
    """

    model: nn.Module
    targets: tuple[str, ...] = attrs.field(converter=tuple)
    heads: tuple[str, ...] = attrs.field(converter=tuple)
    sharing: Sharing | None
    inputs: Callable[[Mapping[str, Tensor]], dict]
    outputs: Callable[[Any, Mapping[str, Tensor]], dict[str, Tensor]]
    passthrough: Mapping[str, str] = attrs.field(factory=dict, converter=dict)
    _layers: dict[str, Linear] = attrs.field(init=False, repr=False)
    _names: dict[str, str] = attrs.field(init=False, repr=False)
    _shape_of: dict[str, tuple[int, ...]] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        every = linear_layers(self.model)
        unknown = [t for t in self.targets if t not in every]
        if unknown:
            close = difflib.get_close_matches(unknown[0], every, n=3)
            raise ValueError(
                f"Backbone: targets {unknown[:5]} are not linear layers of "
                f"{type(self.model).__name__}" + (f"; did you mean {close}?" if close else ".")
                + " Build targets with moil.backbones.select_targets(model, patterns)."
            )
        twice = sorted({t for t in self.targets if self.targets.count(t) > 1})
        if twice:
            raise ValueError(f"Backbone: targets listed twice: {twice}.")
        layers = {t: every[t] for t in self.targets}
        # Override key -> the model's own tensor name; model names map to themselves.
        names = {n: n for n, _ in self.model.named_parameters(remove_duplicate=False)}
        names.update({n: n for n, _ in self.model.named_buffers(remove_duplicate=False)})
        for t, info in layers.items():
            names[f"{t}.weight"] = info.weight
            if info.bias is not None:
                names[f"{t}.bias"] = info.bias
        params = {n for n, _ in self.model.named_parameters(remove_duplicate=False)}
        bad = [h for h in self.heads if h not in params]
        if bad:
            raise ValueError(
                f"Backbone: heads {bad[:5]} are not parameters of {type(self.model).__name__}; "
                "heads are names from model.named_parameters() (see select_params)."
            )
        taken = {info.weight for info in layers.values()} | {info.bias for info in layers.values()}
        both = [h for h in self.heads if h in taken]
        if both:
            raise ValueError(f"Backbone: {both[:5]} are both heads and target tensors; pick one role.")
        for key, name in self.passthrough.items():
            if name not in names:
                raise ValueError(f"Backbone: passthrough {key!r} names {name!r}, not a model parameter.")
        object.__setattr__(self, "_layers", layers)
        object.__setattr__(self, "_names", names)
        # Shapes, like the layers above, are fixed for the backbone's life: read once, not
        # per forward (each walk of the module tree costs about a millisecond).
        object.__setattr__(self, "_shape_of", self._shapes())
        if self.sharing is not None:
            self.sharing.check_widths({t: info.in_features for t, info in layers.items()}, "Backbone")

    # -- tensors --------------------------------------------------------------
    def target_keys(self) -> tuple[str, ...]:
        """``"<t>.weight"`` and, where the layer has one, ``"<t>.bias"`` for every target."""
        keys = []
        for t, info in self._layers.items():
            keys.append(f"{t}.weight")
            if info.bias is not None:
                keys.append(f"{t}.bias")
        return tuple(keys)

    def base(self) -> dict[str, Tensor]:
        """``{"<t>.weight": W0 (out, in), "<t>.bias": b0 (out,)}`` — detached views, not copies."""
        tensors = dict(self.model.named_parameters(remove_duplicate=False))
        return {k: tensors[self._names[k]].detach() for k in self.target_keys()}

    def head_params(self) -> dict[str, Tensor]:
        """The heads' initial values: detached *clones* (they will be trained)."""
        tensors = dict(self.model.named_parameters(remove_duplicate=False))
        return {h: tensors[h].detach().clone() for h in self.heads}

    def frozen(self) -> dict[str, Tensor]:
        """Every parameter and buffer that is neither a target tensor nor a head, detached."""
        taken = {self._names[k] for k in self.target_keys()} | set(self.heads)
        return {n: t.detach() for n, t in self._named_tensors() if n not in taken}

    def num_parameters(self) -> int:
        """Total parameters of the model (tied ones counted once)."""
        return sum(p.numel() for p in self.model.parameters())

    def _named_tensors(self):
        return itertools.chain(self.model.named_parameters(), self.model.named_buffers())

    def to_model_names(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``params`` keyed by the model's own parameter names, e.g. for export or
        ``load_state_dict``: a fused target's ``"<mha>.in_proj.weight"`` becomes
        ``"<mha>.in_proj_weight"``; every other key is already a model name.

        Raises:
          KeyError: a key is neither a target tensor nor a model parameter/buffer.
          ValueError: a value's shape differs from the tensor it replaces.
        """
        shapes = self._shape_of
        out = {}
        for key, value in params.items():
            name = self._names.get(key)
            if name is None:
                raise KeyError(self._unknown(key))
            if tuple(value.shape) != shapes[name]:
                raise ValueError(
                    f"Backbone: override {key!r} has shape {tuple(value.shape)} but the model's "
                    f"{name!r} has shape {shapes[name]}."
                )
            out[name] = value
        return out

    def resolve(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The full ``{model name: tensor}`` dict a forward uses: the model's tensors,
        detached, overridden by ``params`` (see :meth:`to_model_names` for errors)."""
        # Detached afresh each call (cheap): a cached detach would go stale after
        # ``model.to(...)``, which swaps ``param.data`` under the same Parameter.
        full = {n: t.detach() for n, t in self._named_tensors()}
        full.update(self.to_model_names(params))
        return full

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        named = itertools.chain(
            self.model.named_parameters(remove_duplicate=False),
            self.model.named_buffers(remove_duplicate=False),
        )
        return {n: tuple(t.shape) for n, t in named}

    def _unknown(self, key: str) -> str:
        owner, _, leaf = key.rpartition(".")
        if leaf == "bias" and owner in self._layers:
            info = self._layers[owner]
            return BIAS_FREE.format(key=key, target=owner, out=info.out_features, inp=info.in_features)
        close = difflib.get_close_matches(key, self._names, n=3)
        return UNKNOWN_KEY.format(
            key=key,
            model=type(self.model).__name__,
            heads=list(self.heads[:3]),
            close=f"Did you mean {close}?" if close else "",
        )

    # -- the pure forward ----------------------------------------------------
    def __call__(self, params: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Run the model with ``params`` overriding its tensors; return moil's outputs dict.

        Args:
          params: ``"<t>.weight"`` ``(out, in)``, ``"<t>.bias"`` ``(out,)`` and head
            parameters; missing ones keep the model's values.
          batch: HF-named inputs (``input_ids`` ``(B, L)``, ``pixel_values``
            ``(B, 3, H, W)``, …) and labels, which are not passed to the model.
        """
        if isinstance(batch, Mapping) and (problem := pixel_problem(batch)):  # metadata only: no sync
            raise ValueError(problem)
        full, kwargs = self.resolve(params), None
        try:
            kwargs = self.inputs(batch)
            out = torch.func.functional_call(self.model, full, args=(), kwargs=kwargs, tie_weights=True,
                                             strict=False)
        except torch.OutOfMemoryError:
            raise  # unchanged: callers that shrink the batch on OOM (accelerate) catch this type
        except (IndexError, RuntimeError, ValueError, TypeError, AttributeError) as err:
            # The model's own error (an embedding's bare IndexError, a conv's channel count) names
            # no input: say which of the inputs the model received is wrong, only when failing;
            # when none is, the model's own error stands.
            if not isinstance(batch, Mapping):
                raise TypeError(f"Backbone: a batch is a dict of tensors, got a {type(batch).__name__}.") from err
            problem = kwargs is not None and input_problem(self.model, kwargs)
            if problem:
                raise ValueError(problem) from err
            raise
        result = dict(self.outputs(out, batch))
        for key, name in self.passthrough.items():
            result[key] = full[name]
        return result

    def adapter(self, approx: Approximation) -> Adapter:
        """An :class:`~moil.approx.Adapter` of ``approx`` over the targets, sharing only
        what ``approx`` declares shareable (none of the transform for ``LowRank``)."""
        sharing = self.sharing
        if sharing is not None:
            keys = sharing.keys & approx.shareable
            sharing = Sharing(keys, strip=sharing.strip) if keys else None
        return Adapter(approx, self.targets, sharing)


# -- the generic constructor ---------------------------------------------------
def from_model(
    model: nn.Module,
    targets: Patterns,
    heads: Patterns = (),
    *,
    inputs: Callable[[Mapping[str, Tensor]], dict] | None = None,
    outputs: Callable[[Any, Mapping[str, Tensor]], dict[str, Tensor]] | None = None,
    sharing: Sharing | None | Literal["auto"] = "auto",
    exclude: Patterns = (),
    passthrough: Mapping[str, str] | None = None,
) -> Backbone:
    """A :class:`Backbone` for any model: targets and heads chosen by patterns.

    Args:
      model: any :class:`torch.nn.Module` (a transformers task model or your own).
      targets: regex ``str`` (full match) or suffixes, see :func:`select_targets`.
      heads: regex ``str`` on parameter names, or parameter names / module paths.
      inputs: ``batch → kwargs``; default passes the keys ``model.forward`` names.
      outputs: ``(output, batch) → dict``; default ``{"logits": output.logits}``.
      sharing: ``"auto"`` (default) gives ``Sharing(TRANSFORM_KEYS)`` when some
        targets are q/k/v siblings of one attention block, else ``None`` (e.g. a
        fused qkv layer is one target and shares with nothing).
      exclude: patterns of linear layers to leave out.
      passthrough: output key → parameter name copied into the outputs.

    Example:
      >>> bb = from_model(model, ["query", "key", "value"], heads=["classifier"])  # doctest: +SKIP
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"from_model: model must be a torch.nn.Module (e.g. a transformers model), got a "
                        f"{type(model).__name__}; load it first, e.g. AutoModel.from_pretrained(folder).")
    chosen = select_targets(model, targets, exclude)
    head_names = select_params(model, heads) if heads else ()
    if isinstance(sharing, str):
        if sharing != "auto":
            raise ValueError(f"from_model: sharing must be a Sharing, None or 'auto', got {sharing!r}.")
        sharing = auto_sharing(chosen)
    return Backbone(
        model,
        chosen,
        head_names,
        sharing,
        inputs if inputs is not None else forward_inputs(model),
        outputs if outputs is not None else Logits(),
        passthrough or {},
    )


def auto_sharing(targets: tuple[str, ...], sharing: Sharing | None = None) -> Sharing | None:
    """``sharing`` (default ``Sharing(TRANSFORM_KEYS)``) if it groups two targets, else ``None``."""
    rule = sharing if sharing is not None else Sharing(TRANSFORM_KEYS)
    groups = [rule.group(t) for t in targets]
    return rule if len(set(groups)) < len(groups) else None
