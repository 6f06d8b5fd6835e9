"""Approximation functions: how a small stored adaptation parametrises a dense weight.

Each is an immutable component following :class:`Approximation`:
``shapes``/``init`` → parameters, ``weight``/``bias`` → the effective ``Ŵ``/``b̂``,
``num_params`` → stored size. A variant is another class: the adapter after the
layer is :class:`OutputTransform` / :class:`OutputHybrid` (:func:`on_side` picks by
name). :class:`Adapter` lifts one to many named layers, with :class:`Sharing`
declaring parameters shared by layers that read one input.
"""

from moil.approx.adapter import QKV_SUFFIX, SEP, Adapter, Sharing
from moil.approx.hybrid import Hybrid, OutputHybrid, on_side
from moil.approx.low_rank import LowRank
from moil.approx.protocol import Approximation
from moil.approx.transform import TRANSFORM_KEYS, OutputTransform, Transform

__all__ = [
    "Adapter",
    "Approximation",
    "Hybrid",
    "LowRank",
    "OutputHybrid",
    "OutputTransform",
    "QKV_SUFFIX",
    "SEP",
    "Sharing",
    "TRANSFORM_KEYS",
    "Transform",
    "on_side",
]
