"""moil — Momentum Imitation Learning for parameter-efficient adaptation.

The parts, one job each:

* :mod:`moil.approx` — approximation functions (``LowRank``, ``Transform``, ``Hybrid``),
  lifted to many layers by ``Adapter`` with declared ``Sharing``;
* :mod:`moil.objectives` — imitation and task losses, metrics, the bound helpers;
* :mod:`moil.schedules` — one family of ``step -> value`` schedules (learning rates, momenta),
  bound to a run's length by ``bind_run``;
* :mod:`moil.momentum` — momentum targets, half-lives, the too-slow-for-the-run check;
* :mod:`moil.optim` — a pure AdamW (equal to ``torch.optim.AdamW``);
* :mod:`moil.solvers` — how a student follows its target (gradient steps, closed forms);
* :mod:`moil.backbones` — an unmodified transformers model as targets, heads, a pure forward;
* :mod:`moil.recipes` — MoIL, LoRA, full fine-tuning, … as ``init``/``step`` over explicit state,
  built from a shared ``TaskStep`` and ``Imitation``;
* :mod:`moil.observer`, :mod:`moil.integrations` — MoIL's imitation riding on any training
  loop, and a ``transformers.Trainer`` callback;
* :mod:`moil.train`, :mod:`moil.checkpoint`, :mod:`moil.export` — the loop, exact resume, export;
  :mod:`moil.precision` (autocast forward), :mod:`moil.autodiff` (gradients on fresh leaves);
* :mod:`moil.testing` — Hypothesis strategies and contract checks for new approximations;
* :mod:`moil.harness` — the offline benchmark (configs, demo data, runs, grids, reports)
  and the ``moil`` command; the library above never imports it.
"""

import os

# MKL's conditional numerical reproducibility: without it, MKL on some CPUs (seen on an AMD EPYC)
# picks code paths by memory alignment, so the same product gives other last bits run to run and
# exact resume (bitwise equal to an uninterrupted run) breaks. AUTO keeps the CPU's best code path.
# It must be set before MKL's first call; a user's own setting wins.
os.environ.setdefault("MKL_CBWR", "AUTO")

__version__ = "0.1.0"
