"""Approximation functions: how a small stored adaptation parametrises a dense weight.

Each is an immutable component following :class:`Approximation`:
``init`` → parameters, ``weight``/``bias`` → the effective ``Ŵ``/``b̂``,
``num_params`` → stored size. :class:`Adapter` lifts one to many named layers,
with :class:`Sharing` declaring parameters shared by layers that read one input.
"""

from moil.approx.adapter import QKV_SUFFIX, SEP, Adapter, Sharing
from moil.approx.hybrid import Hybrid
from moil.approx.low_rank import LowRank
from moil.approx.protocol import Approximation
from moil.approx.transform import TRANSFORM_KEYS, Transform

__all__ = [
    "Adapter",
    "Approximation",
    "Hybrid",
    "LowRank",
    "QKV_SUFFIX",
    "SEP",
    "Sharing",
    "TRANSFORM_KEYS",
    "Transform",
]
