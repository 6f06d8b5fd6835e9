"""Many targets, one approximation: parameter trees, sharing and merging.

An :class:`Adapter` applies one approximation to a set of target linear layers
named by their module paths (``"encoder.layer.0.attention.self.query"``). Its
parameters live in one flat ``dict[str, Tensor]`` keyed ``"<owner>::<name>"``,
where the owner is the target itself or, for a parameter declared shared by a
:class:`Sharing` rule, the group of targets that share it.
"""

from __future__ import annotations

import difflib
import re
from typing import Iterable, Mapping

import attrs
import torch
from torch import Tensor

from moil.approx.protocol import Approximation

__all__ = ["Adapter", "Sharing", "QKV_SUFFIX", "SEP"]

SEP = "::"
#: Matches the last path component of attention query/key/value projections in
#: BERT/ViLT (``query``), CLIP/LLaMA (``q_proj``) and T5-style (``q``) models.
QKV_SUFFIX = r"\.(query|key|value|q_proj|k_proj|v_proj|q|k|v)$"


def _frozenset(value: Iterable[str] | str) -> frozenset[str]:
    return frozenset([value] if isinstance(value, str) else value)


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
    strip: str = QKV_SUFFIX

    def __attrs_post_init__(self) -> None:
        try:
            re.compile(self.strip)
        except re.error as err:
            raise ValueError(f"Sharing: strip={self.strip!r} is not a valid regex ({err}).") from None

    def group(self, target: str) -> str:
        """The group name of ``target``."""
        return re.sub(self.strip, "", target, count=1) or target


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
    targets: tuple[str, ...] = attrs.field(converter=tuple)
    sharing: Sharing | None = None

    def __attrs_post_init__(self) -> None:
        if not self.targets:
            raise ValueError("Adapter: targets is empty; name at least one linear layer.")
        duplicates = sorted({t for t in self.targets if self.targets.count(t) > 1})
        if duplicates:
            raise ValueError(f"Adapter: targets listed twice: {duplicates}.")
        if self.sharing is not None:
            allowed = frozenset(getattr(self.approx, "shareable", frozenset()))
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

    def groups(self) -> dict[str, tuple[str, ...]]:
        """Sharing groups: group name → member targets (singletons included)."""
        out: dict[str, list[str]] = {}
        for t in self.targets:
            out.setdefault(self.sharing.group(t) if self.sharing else t, []).append(t)
        return {g: tuple(ts) for g, ts in out.items()}

    def target_params(self, params: Mapping[str, Tensor], target: str) -> dict[str, Tensor]:
        """The parameters one target's approximation sees (own ∪ shared), keys bare."""
        return self._views(params)[target]

    def _views(self, params: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
        # One pass over the flat dict: bucket by owner, then give each target its
        # own bucket plus the shared keys of its group's bucket.
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
    def init(
        self, base: Mapping[str, Tensor], *, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Fresh parameters for every target; a shared one is made once per group.

        Deterministic for a seeded ``generator``: targets are visited in order.
        """
        self._check_base(base)
        self._check_groups(base)
        params: dict[str, Tensor] = {}
        for t in self.targets:
            fresh = self.approx.init(base[f"{t}.weight"], base.get(f"{t}.bias"), generator=generator)
            for name, value in fresh.items():
                params.setdefault(f"{self.owner(t, name)}{SEP}{name}", value)
        return params

    def merge(self, params: Mapping[str, Tensor], base: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Effective tensors ``{"<t>.weight": Ŵ, "<t>.bias": b̂}`` for every target.

        ``"<t>.bias"`` is absent only when the layer has no bias and the
        approximation adds none. ``params`` and ``base`` are untouched; a bias the
        approximation leaves alone (LowRank) is ``b0`` itself, not a copy.
        """
        self._check_base(base)
        out: dict[str, Tensor] = {}
        views = self._views(params)
        for t in self.targets:
            p, w0, b0 = views[t], base[f"{t}.weight"], base.get(f"{t}.bias")
            both = getattr(self.approx, "weight_and_bias", None)
            if both is not None:
                w, b = both(p, w0, b0)
            else:
                w, b = self.approx.weight(p, w0), self.approx.bias(p, w0, b0)
            out[f"{t}.weight"] = w
            if b is not None:
                out[f"{t}.bias"] = b
        return out

    def num_params(self, base: Mapping[str, Tensor]) -> int:
        """Stored parameters: each target's count, with shared ones counted once."""
        self._check_base(base)
        shapes = {}
        for t in self.targets:
            out_f, in_f = base[f"{t}.weight"].shape
            per = getattr(self.approx, "shapes", None)
            if per is None:  # a user approximation without shapes(): count init's tensors
                per_t = {k: tuple(v.shape) for k, v in self.approx.init(base[f"{t}.weight"]).items()}
            else:
                per_t = per(out_f, in_f)
            for name, shape in per_t.items():
                shapes.setdefault(f"{self.owner(t, name)}{SEP}{name}", shape)
        return sum(int(torch.Size(s).numel()) for s in shapes.values())

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

    def _check_groups(self, base: Mapping[str, Tensor]) -> None:
        if self.sharing is None:
            return
        for group, members in self.groups().items():
            widths = {t: base[f"{t}.weight"].shape[1] for t in members}
            if len(set(widths.values())) > 1:
                raise ValueError(
                    f"Adapter: group {group!r} shares {sorted(self.sharing.keys)} but its "
                    f"members read inputs of different widths {widths}; only layers that read "
                    "the same input can share parameters — adjust Sharing.strip."
                )
