"""The argument checks of :func:`moil.train.train`: each bad argument is refused before anything
runs (no run folder, no checkpoint), naming the argument, its value and the fix.

Numbers are checked by kind, not by Python type: a numpy integer is an integer
(``numbers.Integral``) and ``np.float64(300)`` a real number (``numbers.Real``); ``True`` is
neither (``bool`` is refused where a count or a duration is meant).
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any

__all__ = ["check_arguments"]


def _whole(value: Any, low: int) -> bool:
    """``value`` is an integer (Python or numpy, not ``bool``) ``>= low``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low


def _positive(value: Any) -> bool:
    """``value`` is a finite real number (Python or numpy, not ``bool``) ``> 0``."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 < value and math.isfinite(value)


def check_arguments(recipe: Any, backbone: Any, *, steps: Any, seed: Any, run_dir: Any, checkpoint_every: Any,
                    checkpoint_seconds: Any, resume: Any, on_step: Any, validate: Any, validate_every: Any,
                    compile: Any = False) -> None:
    """Refuse a bad argument of :func:`~moil.train.train`.

    Raises:
      TypeError: ``recipe`` is not a recipe, ``backbone`` not a backbone.
      ValueError: any other argument, with its value and what it must be.
    """
    seconds = checkpoint_seconds
    for bad, error, message in (
        (not _whole(steps, 0), ValueError, f"steps must be an integer >= 0, got steps={steps!r}"),
        (not all(callable(getattr(recipe, m, None)) for m in ("init", "step", "finalize")), TypeError,
         f"recipe must be a moil recipe (init/step/finalize, e.g. moil.recipes.MoIL), got a {type(recipe).__name__}"),
        (not callable(getattr(backbone, "base", None)), TypeError, (
            f"backbone must be a moil.backbones.Backbone, got a {type(backbone).__name__}; wrap a model with "
            "moil.backbones.from_model(model, targets) or vilt.build(model)")),
        (not _whole(seed, -2**63), ValueError, f"seed must be an integer, got seed={seed!r}"),
        (checkpoint_every is not None and not _whole(checkpoint_every, 0), ValueError,
         f"checkpoint_every must be an integer >= 1 (0 or None: off), got checkpoint_every={checkpoint_every!r}"),
        (seconds is not None and not _positive(seconds), ValueError,
         f"checkpoint_seconds must be a finite number > 0 (or None: off), got checkpoint_seconds={seconds!r}"),
        (run_dir is None and bool(resume or checkpoint_every or seconds), ValueError, (
            "resume, checkpoint_every and checkpoint_seconds need run_dir (where the checkpoint goes), got "
            f"run_dir=None with resume={resume!r}, checkpoint_every={checkpoint_every!r}, "
            f"checkpoint_seconds={seconds!r}")),
        (run_dir is not None and Path(run_dir).exists() and not Path(run_dir).is_dir(), ValueError,
         f"run_dir={str(run_dir)!r} exists and is not a folder; give a folder path"),
        (on_step is not None and not callable(on_step), ValueError,
         f"on_step must be a function (step, metrics), got {on_step!r}"),
        ((validate is None) != (validate_every is None) or (validate is not None and not callable(validate)),
         ValueError, ("give validate (a function state -> metrics) and validate_every (the steps between calls) "
                      f"together, got validate={validate!r}, validate_every={validate_every!r}")),
        (validate_every is not None and not _whole(validate_every, 1), ValueError,
         f"validate_every must be an integer >= 1, got validate_every={validate_every!r}"),
        (not (isinstance(compile, bool) or callable(compile)), ValueError, (
            "compile must be True/False or a function step -> compiled step (e.g. "
            f"functools.partial(torch.compile, backend='aot_eager')), got compile={compile!r}")),
    ):
        if bad:
            raise error(f"train: {message}.")
