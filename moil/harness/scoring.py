"""Scoring a trained run: every candidate a recipe offers, on each split, with its stored size.

One path for :func:`~moil.harness.run.run_one` and ``moil eval``: :func:`score`
asks the recipe for its candidates (parameter sets for ``backbone(params, batch)``)
and their stored sizes, and evaluates each on the same fixed batches of each split.
"""

from __future__ import annotations

from typing import Any

from moil.harness.batches import eval_batches
from moil.harness.build import device_of
from moil.harness.config import Config
from moil.harness.data import DemoData
from moil.objectives import itm_accuracy, vqa_score
from moil.train import evaluate

__all__ = ["METRICS", "PRIMARY_METRIC", "score"]

PRIMARY_METRIC = {"itm": "accuracy", "vqa": "vqa_score"}
METRICS = {
    "itm": {"accuracy": lambda o, b: itm_accuracy(o["itm_logits"], b["itm_labels"])},
    "vqa": {"vqa_score": lambda o, b: vqa_score(o["vqa_logits"], b["vqa_targets"])},
}


def score(
    recipe: Any,
    state: Any,
    backbone: Any,
    config: Config,
    data: DemoData,
    task: str,
    splits: tuple[str, ...] = ("val", "test"),
) -> dict[str, dict[str, Any]]:
    """``{candidate: {split: {metric: value}, "stored_parameters": n}}`` for every
    candidate of ``recipe.candidates(state, backbone)``, sized by ``recipe.stored_parameters``."""
    candidates = recipe.candidates(state, backbone)
    sizes = recipe.stored_parameters(state, backbone)
    device = device_of(config)
    size = config.data.eval_batch_size
    batches = {split: eval_batches(data, split, task, size, device) for split in splits}
    return {
        name: {split: evaluate(backbone, params, batches[split], METRICS[task]) for split in splits}
        | {"stored_parameters": sizes[name]}
        for name, params in candidates.items()
    }
