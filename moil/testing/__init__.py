"""Property-testing helpers for approximations: Hypothesis strategies and contract laws.

Check a new approximation against the contract every moil component relies on
(identity at init, shapes/dtype/device, ``num_params``, determinism, purity,
finite gradients, and optionally factored == materialised) in three lines::

    from moil.testing import check_approximation
    from moil.approx import LowRank
    check_approximation(LowRank(rank=2), max_examples=10)

Strategies for your own properties: :func:`weight_shapes`, :func:`weights`,
:func:`approximations`, :func:`adapter_params`, :func:`seeds`.
"""

from moil.testing.check import check_approximation
from moil.testing.laws import LAWS, LawViolation, Reference
from moil.testing.strategies import adapter_params, approximations, seeds, weight_shapes, weights

__all__ = [
    "LAWS",
    "LawViolation",
    "Reference",
    "adapter_params",
    "approximations",
    "check_approximation",
    "seeds",
    "weight_shapes",
    "weights",
]
