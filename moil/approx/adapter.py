"""Many targets, one approximation: parameter trees, sharing and merging.

An :class:`Adapter` applies one approximation to a set of target linear layers
named by their module paths (``"encoder.layer.0.attention.self.query"``). Its
parameters live in one flat ``dict[str, Tensor]`` keyed ``"<owner>::<name>"``,
where the owner is the target itself or, for a parameter declared shared by a
:class:`Sharing` rule, the group of targets that share it.
"""

from __future__ import annotations

import difflib
import functools
import re
from typing import Iterable, Mapping

import attrs
import torch
from torch import Tensor

from moil.approx.protocol import Approximation, size

__all__ = ["Adapter", "Sharing", "QKV_SUFFIX", "SEP"]

SEP = "::"
#: Matches the last path component of attention query/key/value projections in
#: BERT/ViLT (``query``), CLIP/LLaMA (``q_proj``) and T5-style (``q``) models.
QKV_SUFFIX = r"\.(query|key|value|q_proj|k_proj|v_proj|q|k|v)$"


def _frozenset(value: Iterable[str] | str) -> frozenset[str]:
    return frozenset([value] if isinstance(value, str) else value)


def _regex(instance, attribute, value) -> None:
    try:
        re.compile(value)
    except (re.error, TypeError) as err:
        raise ValueError(
            f"Sharing: {attribute.name}={value!r} is not a valid regex ({err}); the default is "
            "QKV_SUFFIX."
        ) from None


def _targets(instance, attribute, value: tuple[str, ...]) -> None:
    if not value:
        raise ValueError("Adapter: targets is empty; name at least one linear layer.")
    twice = sorted({t for t in value if value.count(t) > 1})
    if twice:
        raise ValueError(f"Adapter: targets listed twice: {twice}; list each layer once.")


@functools.lru_cache(maxsize=65536)
def _group_name(strip: str, target: str) -> str:
    # Cached: solvers ask for every parameter's key on every step.
    return re.sub(strip, "", target, count=1) or target


@attrs.frozen
class Sharing:
    r"""Targets that read the same input share the parameters named in ``keys``.

    A target's *group* is its name with the first match of the regex ``strip``
    removed: with the default, ``"…attention.self.query"``, ``"….key"`` and
    ``"….value"`` form the group ``"…attention.self"`` and share one copy of
    each key (MoIL's transform shared by q, k and v). A target that ``strip``
    does not match is a group of its own.

    Only parameters an approximation declares in its ``shareable`` set (those
    that depend on the input alone) may be shared.

    Args:
      keys: parameter names to share, e.g. ``moil.approx.TRANSFORM_KEYS``.
      strip: regex removed from a target name to give its group name.
    """

    keys: frozenset[str] = attrs.field(converter=_frozenset)
    strip: str = attrs.field(default=QKV_SUFFIX, validator=_regex)

    def group(self, target: str) -> str:
        """The group name of ``target``."""
        return _group_name(self.strip, target)

    def groups(self, targets: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """Group name → its member targets, in ``targets``' order (singletons included)."""
        out: dict[str, list[str]] = {}
        for t in targets:
            out.setdefault(self.group(t), []).append(t)
        return {g: tuple(ts) for g, ts in out.items()}

    def check_widths(self, widths: Mapping[str, int], owner: str) -> None:
        """Raise unless the members of each group read inputs of one width.

        Args:
          widths: target → its input width ``in_features``.
          owner: who checks, for the message (``"Adapter"``, ``"Backbone"``).
        """
        for group, members in self.groups(widths).items():
            seen = {t: widths[t] for t in members}
            if len(set(seen.values())) > 1:
                raise ValueError(
                    f"{owner}: sharing group {group!r} mixes input widths: its members read "
                    f"different widths {seen}, but {sorted(self.keys)} may be shared only by "
                    "layers that read the same input — change Sharing.strip or pass sharing=None."
                )


@attrs.frozen
class Adapter:
    r"""One approximation applied to named target layers, with optional sharing.

    ``base`` arguments map ``"<target>.weight"`` (shape ``(out, in)``) and, if the
    layer has one, ``"<target>.bias"`` (``(out,)``) to tensors — a model's
    ``state_dict()`` or ``dict(named_parameters())`` works as is.

    Args:
      approx: an :class:`~moil.approx.protocol.Approximation`.
      targets: module paths of the adapted linear layers.
      sharing: an optional :class:`Sharing` rule.

    Example:
      >>> import moil.approx as ma
      >>> base = {f"attn.{n}.weight": torch.randn(4, 4) for n in ("query", "key", "value")}
      >>> ad = ma.Adapter(ma.Hybrid(2), ["attn.query", "attn.key", "attn.value"],
      ...                 ma.Sharing(ma.TRANSFORM_KEYS))
      >>> params = ad.init(base)
      >>> sorted(k for k in params if k.startswith("attn::"))[0]
      'attn::transform_down'
      >>> torch.equal(ad.merge(params, base)["attn.key.weight"], base["attn.key.weight"])
      True
    """

    approx: Approximation
    targets: tuple[str, ...] = attrs.field(converter=tuple, validator=_targets)
    sharing: Sharing | None = None

    def __attrs_post_init__(self) -> None:
        if self.sharing is not None:
            allowed = self.approx.shareable
            bad = sorted(self.sharing.keys - allowed)
            if bad:
                raise ValueError(
                    f"Adapter: cannot share {bad}: {type(self.approx).__name__} declares only "
                    f"{sorted(allowed)} as shareable (parameters that depend on the input alone)."
                )
            clash = sorted({self.sharing.group(t) for t in self.targets} & set(self.targets))
            clash = [g for g in clash if self.sharing.group(g) != g]
            if clash:
                raise ValueError(f"Adapter: group names {clash} equal target names; change strip.")

    # -- keys ---------------------------------------------------------------
    def owner(self, target: str, name: str) -> str:
        """Who owns parameter ``name`` of ``target``: the target or its sharing group."""
        if self.sharing is not None and name in self.sharing.keys:
            return self.sharing.group(target)
        return target

    def key(self, target: str, name: str) -> str:
        """The flat key of parameter ``name`` of ``target``: ``"<owner>::<name>"``."""
        return f"{self.owner(target, name)}{SEP}{name}"

    def groups(self) -> dict[str, tuple[str, ...]]:
        """Sharing groups: group name → member targets (singletons included)."""
        if self.sharing is None:
            return {t: (t,) for t in self.targets}
        return self.sharing.groups(self.targets)

    def target_params(self, params: Mapping[str, Tensor], target: str) -> dict[str, Tensor]:
        """The parameters one target's approximation sees (own ∪ shared), keys bare."""
        return self.views(params)[target]

    def views(self, params: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
        """Every target's :meth:`target_params` from one pass over ``params``."""
        # Bucket by owner, then give each target its own bucket plus the shared
        # keys of its group's bucket.
        by_owner: dict[str, dict[str, Tensor]] = {}
        for key, value in params.items():
            owner, sep, name = key.rpartition(SEP)
            if not sep:
                raise KeyError(
                    f"Adapter: parameter key {key!r} has no {SEP!r}; keys look like "
                    f"'<target>{SEP}<name>', as made by Adapter.init."
                )
            by_owner.setdefault(owner, {})[name] = value
        views = {}
        for t in self.targets:
            view = dict(by_owner.get(t, {}))
            if self.sharing is not None:
                group = by_owner.get(self.sharing.group(t), {})
                view.update({k: v for k, v in group.items() if k in self.sharing.keys})
            views[t] = view
        return views

    # -- the contract, lifted to many targets -------------------------------
    def shapes(self, base: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
        """``{"<owner>::<name>": shape}`` of every parameter :meth:`init` makes for ``base``,
        a shared one once per group, in :meth:`init`'s order.

        Raises:
          KeyError: a target has no ``"<t>.weight"`` in ``base``.
          ValueError: a rank does not fit a layer, or a group mixes input widths.
        """
        self._check_base(base)
        if self.sharing is not None:
            widths = {t: base[f"{t}.weight"].shape[1] for t in self.targets}
            self.sharing.check_widths(widths, "Adapter")
        out: dict[str, tuple[int, ...]] = {}
        for t in self.targets:
            for name, shape in self.approx.shapes(*base[f"{t}.weight"].shape).items():
                out.setdefault(self.key(t, name), tuple(shape))
        return out

    def init(
        self, base: Mapping[str, Tensor], *, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Fresh parameters for every target; a shared one is made once per group.

        Deterministic for a seeded ``generator``: targets are visited in order.
        """
        self.shapes(base)  # every check, before any tensor is drawn
        params: dict[str, Tensor] = {}
        for t in self.targets:
            fresh = self.approx.init(base[f"{t}.weight"], base.get(f"{t}.bias"), generator=generator)
            for name, value in fresh.items():
                params.setdefault(self.key(t, name), value)
        return params

    def merge(self, params: Mapping[str, Tensor], base: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Effective tensors ``{"<t>.weight": Ŵ, "<t>.bias": b̂}`` for every target.

        ``"<t>.bias"`` is absent only when the layer has no bias and the
        approximation adds none. ``params`` and ``base`` are untouched; a bias the
        approximation leaves alone (LowRank) is ``b0`` itself, not a copy.
        """
        self._check_base(base)
        out: dict[str, Tensor] = {}
        views = self.views(params)
        for t in self.targets:
            w, b = self.approx.weight_and_bias(views[t], base[f"{t}.weight"], base.get(f"{t}.bias"))
            out[f"{t}.weight"] = w
            if b is not None:
                out[f"{t}.bias"] = b
        return out

    def num_params(self, base: Mapping[str, Tensor]) -> int:
        """Stored parameters: each target's count, with shared ones counted once."""
        return size(self.shapes(base))

    # -- validation ---------------------------------------------------------
    def _check_base(self, base: Mapping[str, Tensor]) -> None:
        missing = [t for t in self.targets if f"{t}.weight" not in base]
        if missing:
            names = [k[: -len(".weight")] for k in base if k.endswith(".weight")]
            hint = difflib.get_close_matches(missing[0], names, n=3)
            raise KeyError(
                f"Adapter: no weight for target(s) {missing[:5]} in the base parameters"
                + (f"; did you mean {hint}?" if hint else "; check the target names.")
            )
