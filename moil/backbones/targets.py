"""Choosing what to adapt: patterns → linear layers, and splitting parameter dicts.

A *target* is a linear map ``y = W x + b`` of a model, named by its module path
(``"vilt.encoder.layer.0.attention.attention.query"``), exactly as
:meth:`torch.nn.Module.named_modules` spells it. Its tensors are addressed as
``"<target>.weight"`` (shape ``(out, in)``) and ``"<target>.bias"`` (``(out,)``).

Besides every :class:`torch.nn.Linear`, the packed input projection of a
:class:`torch.nn.MultiheadAttention` (one ``(3·d, d)`` matrix computing q, k and v
— a *fused* qkv layer) is a target named ``"<attention>.in_proj"``; its tensors
``"<attention>.in_proj.weight"``/``".bias"`` stand for the module's
``in_proj_weight``/``in_proj_bias`` parameters.

Patterns follow PEFT's ``target_modules``: a ``str`` is a regex that must
:func:`re.fullmatch` the whole module name; a sequence of strings lists name
*suffixes* (``"query"`` matches ``"….query"``; a suffix matches at a ``.``).
"""

from __future__ import annotations

import difflib
import re
from typing import Callable, Collection, Mapping, Sequence, TypeVar

import attrs
from torch import nn

__all__ = [
    "Linear",
    "linear_layers",
    "select_targets",
    "select_params",
    "matches",
    "partition",
    "combine",
]

Patterns = str | Sequence[str]
V = TypeVar("V")

IN_PROJ = "in_proj"

NOTHING_MATCHED = """\
{what}: {patterns!r} matched no linear layer of {model}.
A str is a regex that must match a WHOLE module name; a list holds name suffixes.
Some linear layers of this model:
  {examples}
{close}Write, e.g., targets={suggest!r} (suffixes) or targets=r".*\\.(query|value)" (regex)."""

NOT_LINEAR = """\
{what}: {patterns!r} matched {name!r}, a {kind}, not a linear layer.
moil adapts nn.Linear layers (and the packed q/k/v "<attention>.in_proj" of an
nn.MultiheadAttention). {hint}Narrow the pattern so it names only linear layers{inside}."""


@attrs.frozen
class Linear:
    """Where one target's tensors live in the model.

    Attributes:
      name: the target name (``"<module>"``, or ``"<attention>.in_proj"``).
      weight: the model's parameter name of ``W``, shape ``(out, in)``.
      bias: the model's parameter name of ``b``, shape ``(out,)``, or ``None``.
      out_features, in_features: ``W``'s shape.
    """

    name: str
    weight: str
    bias: str | None
    out_features: int
    in_features: int


def linear_layers(model: nn.Module) -> dict[str, Linear]:
    """Every adaptable linear map of ``model``, in model order, keyed by target name."""
    out: dict[str, Linear] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Linear):
            has_bias = module.bias is not None
            out[name] = Linear(
                name, f"{prefix}weight", f"{prefix}bias" if has_bias else None,
                module.out_features, module.in_features,
            )
        elif isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            w = module.in_proj_weight
            has_bias = module.in_proj_bias is not None
            out[f"{prefix}{IN_PROJ}"] = Linear(
                f"{prefix}{IN_PROJ}", f"{prefix}in_proj_weight",
                f"{prefix}in_proj_bias" if has_bias else None, w.shape[0], w.shape[1],
            )
    return out


def matches(name: str, patterns: Patterns) -> bool:
    """Whether ``name`` matches: a regex (``str``, full match) or any suffix in a sequence."""
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == s or name.endswith("." + s) for s in patterns)


def _check_patterns(what: str, patterns: Patterns) -> None:
    if isinstance(patterns, str):
        try:
            re.compile(patterns)
        except re.error as err:
            raise ValueError(f"{what}: {patterns!r} is not a valid regex ({err}).") from None
    elif not all(isinstance(s, str) for s in patterns):
        raise TypeError(
            f"{what}: patterns must be a regex str or a sequence of str suffixes, got {patterns!r}."
        )


def select_targets(model: nn.Module, patterns: Patterns, exclude: Patterns = ()) -> tuple[str, ...]:
    """Names of the linear layers of ``model`` matched by ``patterns`` and not by ``exclude``.

    Args:
      model: any :class:`torch.nn.Module`; it is only read.
      patterns: a regex ``str`` (full match on module names) or a sequence of suffixes.
      exclude: same forms; matching names are dropped.

    Returns:
      Target names in model order (``named_modules`` order).

    Raises:
      ValueError: nothing matched (the message lists real linear layer names and
        close matches), or a pattern matched a module that is not linear.

    Example:
      >>> m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
      >>> select_targets(m, ["0", "2"])
      ('0', '2')
      >>> select_targets(m, r"\\d", exclude=["2"])
      Traceback (most recent call last):
      ...
      ValueError: select_targets: '\\\\d' matched '1', a ReLU, not a linear layer...
    """
    what = "select_targets"
    _check_patterns(what, patterns)
    _check_patterns(what, exclude)
    layers = linear_layers(model)
    modules = dict(model.named_modules())
    chosen = []
    for name in _candidates(modules, layers):
        if not matches(name, patterns) or matches(name, exclude):
            continue
        if name not in layers:
            raise ValueError(_not_linear(what, patterns, name, modules, layers))
        chosen.append(name)
    if not chosen:
        raise ValueError(_nothing(what, patterns, layers, model))
    return tuple(chosen)


def _candidates(modules: Mapping[str, nn.Module], layers: Mapping[str, Linear]) -> list[str]:
    # Module names in model order, each packed in_proj right after its attention module.
    names = []
    for name, module in modules.items():
        names.append(name)
        virtual = f"{name}.{IN_PROJ}" if name else IN_PROJ
        if virtual in layers:
            names.append(virtual)
    return names


def _not_linear(
    what: str, patterns: Patterns, name: str, modules: Mapping[str, nn.Module],
    layers: Mapping[str, Linear],
) -> str:
    module = modules[name]
    kind = type(module).__name__
    hint = ""
    if isinstance(module, nn.MultiheadAttention):
        hint = f"For its fused q/k/v write {name + '.' + IN_PROJ!r}; for its output {name + '.out_proj'!r}. "
    elif kind == "Conv1D":
        hint = "transformers' Conv1D stores its weight transposed (in, out) and is not supported. "
    prefix = f"{name}." if name else ""
    below = [n for n in layers if n.startswith(prefix)][:6]
    inside = f"; the linear layers inside it are e.g. {below}" if below else ""
    return NOT_LINEAR.format(what=what, patterns=patterns, name=name, kind=kind, hint=hint, inside=inside)


def _nothing(what: str, patterns: Patterns, layers: Mapping[str, Linear], model: nn.Module) -> str:
    # One example per layer "shape" (digits collapsed) keeps the list short and telling.
    seen, examples = set(), []
    for name in layers:
        key = re.sub(r"\.\d+(\.|$)", r".N\1", name)
        if key not in seen:
            seen.add(key)
            examples.append(name)
    probes = [patterns] if isinstance(patterns, str) else list(patterns)
    tails = sorted({n.rsplit(".", 1)[-1] for n in layers})
    close = sorted(
        {c for p in probes for c in difflib.get_close_matches(p, list(layers) + tails, n=3, cutoff=0.6)}
    )
    suggest = [t for t in tails if t in {"query", "key", "value", "q_proj", "k_proj", "v_proj", IN_PROJ}]
    return NOTHING_MATCHED.format(
        what=what,
        patterns=patterns,
        model=type(model).__name__,
        examples="\n  ".join(examples[:12]) or "(none: the model has no nn.Linear)",
        close=f"Close matches: {close}\n" if close else "",
        suggest=suggest or tails[:3],
    )


def select_params(model: nn.Module, patterns: Patterns, *, what: str = "heads") -> tuple[str, ...]:
    """Parameter names of ``model`` chosen by ``patterns``, in model order.

    A ``str`` is a regex that must fully match a parameter name; a sequence
    holds parameter names or module paths (``"classifier"`` selects every
    ``"classifier.…"`` parameter). Each entry of a sequence must select
    something; an empty sequence selects nothing.

    Raises:
      ValueError: a regex or an entry selected no parameter (with close names).
    """
    _check_patterns(what, patterns)
    names = [n for n, _ in model.named_parameters()]
    if isinstance(patterns, str):
        chosen = [n for n in names if re.fullmatch(patterns, n)]
        if not chosen:
            raise ValueError(_no_param(what, patterns, names))
        return tuple(chosen)
    for entry in patterns:
        if not any(n == entry or n.startswith(entry + ".") for n in names):
            raise ValueError(_no_param(what, entry, names))
    return tuple(n for n in names if any(n == e or n.startswith(e + ".") for e in patterns))


def _no_param(what: str, pattern: str, names: Sequence[str]) -> str:
    tops = sorted({n.split(".", 1)[0] for n in names})
    close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.5)
    return (
        f"{what}: {pattern!r} selects no parameter of the model. Write parameter names or module "
        f"paths; the model's top-level modules are {tops}"
        + (f"; close parameter names: {close}." if close else ".")
    )


def partition(
    params: Mapping[str, V], keep: Collection[str] | Callable[[str], bool]
) -> tuple[dict[str, V], dict[str, V]]:
    """Split a flat parameter dict in two: ``(selected, rest)``; order is kept.

    Args:
      params: ``name → tensor``; not modified.
      keep: the names to select, or a predicate on names.

    Example:
      >>> kept, rest = partition({"a.weight": 1, "b.weight": 2}, lambda k: k.startswith("a."))
      >>> kept, rest
      ({'a.weight': 1}, {'b.weight': 2})
      >>> combine(kept, rest) == {"a.weight": 1, "b.weight": 2}
      True
    """
    pick = keep if callable(keep) else frozenset(keep).__contains__
    selected = {k: v for k, v in params.items() if pick(k)}
    rest = {k: v for k, v in params.items() if k not in selected}
    return selected, rest


def combine(*trees: Mapping[str, V]) -> dict[str, V]:
    """Join disjoint flat parameter dicts; the inverse of :func:`partition`.

    Raises:
      KeyError: a name occurs in two dicts (joining would silently drop one value).
    """
    out: dict[str, V] = {}
    for tree in trees:
        for key, value in tree.items():
            if key in out:
                raise KeyError(
                    f"combine: {key!r} is in more than one dict; partition's parts are disjoint — "
                    "to override values use {**base, **overrides} instead."
                )
            out[key] = value
    return out
