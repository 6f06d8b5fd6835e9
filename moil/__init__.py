"""moil — Momentum Imitation Learning for parameter-efficient adaptation.

Packages: :mod:`moil.approx` (approximation functions), :mod:`moil.objectives`
(imitation and task losses, bounds), :mod:`moil.momentum` (momentum targets and
schedules), :mod:`moil.testing` (Hypothesis strategies and contract checks).
"""

__version__ = "0.1.0"
