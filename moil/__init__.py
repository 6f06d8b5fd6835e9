"""moil — Momentum Imitation Learning for parameter-efficient adaptation.

The parts, one job each:

* :mod:`moil.approx` — approximation functions (``LowRank``, ``Transform``, ``Hybrid``),
  lifted to many layers by ``Adapter`` with declared ``Sharing``;
* :mod:`moil.objectives` — imitation and task losses, metrics, the bound helpers;
* :mod:`moil.momentum` — momentum targets and their schedules;
* :mod:`moil.solvers` — how a student follows its target (gradient steps, closed forms);
* :mod:`moil.backbones` — an unmodified transformers model as targets, heads, a pure forward;
* :mod:`moil.recipes` — MoIL, LoRA, full fine-tuning, … as ``init``/``step`` over explicit state;
* :mod:`moil.train`, :mod:`moil.checkpoint`, :mod:`moil.export` — the loop, exact resume, export;
* :mod:`moil.testing` — Hypothesis strategies and contract checks for new approximations;
* :mod:`moil.data`, :mod:`moil.config`, :mod:`moil.experiment`, :mod:`moil.grid`,
  :mod:`moil.report`, :mod:`moil.cli` — the offline benchmark and the ``moil`` command.
"""

__version__ = "0.1.0"
