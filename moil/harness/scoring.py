"""Scoring a trained run: every candidate a recipe offers, on each split, with its stored size.

One path for :func:`~moil.harness.run.run_one` and ``moil eval``: :func:`score`
asks the recipe for its candidates (parameter sets for ``backbone(params, batch)``)
and their stored sizes, and evaluates each on the same fixed batches of each split.
Retrieval (CLIP) ranks the whole split at once: recall@1/5/10 text→image
(``t2i@k``, :attr:`~moil.objectives.Recall.image_retrieval`) and image→text (``i2t@k``),
and their mean ``mean_recall``; ``k`` is capped at the split's size.
"""

from __future__ import annotations

from typing import Any

import attrs

from moil.harness.batches import eval_batches
from moil.harness.build import device_of
from moil.harness.config import Config
from moil.objectives import itm_accuracy, recall_at_k, vqa_score
from moil.train import evaluate

__all__ = ["METRICS", "PRIMARY_METRIC", "ValidationCurve", "curve_candidate", "curve_key", "family_metrics", "score"]

PRIMARY_METRIC = {"itm": "accuracy", "vqa": "vqa_score", "retrieval": "mean_recall", "nlvr2": "accuracy"}
RECALL_AT = (1, 5, 10)


def _recall(k: int | None, direction: str):
    """``(outputs, batch) -> recall`` of the whole split; ``k=None`` = the mean over
    :data:`RECALL_AT` and both directions."""

    def metric(o: dict, b: dict) -> float:
        img, txt = o["image_embeds"], o["text_embeds"]
        ks = RECALL_AT if k is None else (k,)
        values = []
        for kk in ks:
            r = recall_at_k(img, txt, min(kk, img.shape[0]))
            values += [float(r.image_retrieval), float(r.text_retrieval)] if k is None else [float(getattr(r, direction))]
        return sum(values) / len(values)

    return metric


METRICS = {
    "itm": {"accuracy": lambda o, b: itm_accuracy(o["itm_logits"], b["itm_labels"])},
    "vqa": {"vqa_score": lambda o, b: vqa_score(o["vqa_logits"], b["vqa_targets"])},
    "nlvr2": {"accuracy": lambda o, b: itm_accuracy(o["pair_logits"], b["pair_labels"])},
    "retrieval": {
        **{f"t2i@{k}": _recall(k, "image_retrieval") for k in RECALL_AT},
        **{f"i2t@{k}": _recall(k, "text_retrieval") for k in RECALL_AT},
        "mean_recall": _recall(None, ""),
    },
}


def _on_family(metric, key: str, index: int):
    def fn(o: dict, b: dict) -> float:
        rows = b[key] == index
        return metric({k: v[rows] for k, v in o.items() if v.ndim}, {k: v[rows] for k, v in b.items()})

    return fn


def family_metrics(data: Any, task: str) -> dict[str, Any]:
    """The primary metric on each relation family's rows (digit-pairs: ``accuracy/sum``,
    ``vqa_score/larger``…), to read which relations an arm learned; ``{}`` for other data."""
    from moil.harness.data.pairs import PairData

    if not isinstance(data, PairData) or task not in ("nlvr2", "vqa"):
        return {}
    families, key = (data.task.statements, "pair_family") if task == "nlvr2" else (data.task.questions, "question_family")
    name = PRIMARY_METRIC[task]
    return {f"{name}/{fam.name}": _on_family(METRICS[task][name], key, i) for i, fam in enumerate(families)}


def score(
    recipe: Any,
    state: Any,
    backbone: Any,
    config: Config,
    data: Any,
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
    metrics = METRICS[task] | family_metrics(data, task)
    return {
        name: {split: evaluate(backbone, params, batches[split], metrics) for split in splits}
        | {"stored_parameters": sizes[name]}
        for name, params in candidates.items()
    }


def curve_key(candidate: str, metric: str) -> str:
    """The ``metrics.jsonl`` key of a validation-curve point: ``val/<candidate>/<metric>``."""
    return f"val/{candidate}/{metric}"


def curve_candidate(key: str, metric: str) -> str | None:
    """The candidate of a :func:`curve_key` of ``metric`` (names may hold ``/``), else ``None``."""
    head, tail = "val/", f"/{metric}"
    if key.startswith(head) and key.endswith(tail) and len(key) > len(head) + len(tail):
        return key[len(head): -len(tail)]
    return None


@attrs.frozen(eq=False)
class ValidationCurve:
    """``state -> {curve_key(candidate, metric): value}``: the primary metric on ``val`` of
    the model the run trains — a teacher where the state has one (MoIL's: its students are
    fits of it), else the recipe's stored candidate — for ``moil.train.train(validate=...)``.

    The batches are made once, of the training batch size, so a point's forward needs no
    more memory than a training step.

    Attributes:
      rows: how many ``val`` rows each point scores.
    """

    recipe: Any
    backbone: Any
    batches: list[dict]
    task: str

    @classmethod
    def of(cls, recipe: Any, backbone: Any, config: Config, data: Any, task: str) -> ValidationCurve:
        """The curve of ``recipe`` on ``data``'s ``val`` split for ``task``."""
        batches = eval_batches(data, "val", task, config.data.batch_size, device_of(config))
        return cls(recipe, backbone, batches, task)

    @property
    def metric(self) -> str:
        return PRIMARY_METRIC[self.task]

    @property
    def rows(self) -> int:
        return sum(max(v.shape[0] for v in b.values() if v.ndim) for b in self.batches)

    def candidate(self, state: Any) -> tuple[str, dict]:
        """``(name, overrides)`` of the model a point scores."""
        if hasattr(state, "teacher") and hasattr(state, "heads"):
            return "teacher", {**state.teacher, **state.heads}  # no student merged for it
        return self.recipe.primary, self.recipe.candidates(state, self.backbone)[self.recipe.primary]

    def __call__(self, state: Any) -> dict[str, float]:
        name, params = self.candidate(state)
        score = evaluate(self.backbone, params, self.batches, {self.metric: METRICS[self.task][self.metric]})
        return {curve_key(name, self.metric): score[self.metric]}
