"""Scalar objectives and the bound math.

* :mod:`~moil.objectives.imitation` — weight imitation between a student and a
  target (``imitation_loss``, the exact Frobenius distance, the data-aware form);
* :mod:`~moil.objectives.bounds` — the output-error bound and the Eckart–Young
  optimum (``layer_output_bound``, ``network_bound``, ``best_low_rank``);
* :mod:`~moil.objectives.tasks` — task losses as components
  (``ImageTextMatching``, ``ContrastiveRetrieval``, ``VQAScore``, ``PairClassification``);
* :mod:`~moil.objectives.metrics` — their evaluation metrics.
"""

from moil.objectives.bounds import (
    LayerOutputBound,
    LowRankFit,
    best_low_rank,
    eckart_young,
    layer_output_bound,
    network_bound,
    spectral_norm,
)
from moil.objectives.imitation import (
    data_aware_imitation_loss,
    frobenius_distance,
    imitation_loss,
    output_error,
    second_moment,
    squared_frobenius_distance,
)
from moil.objectives.metrics import Recall, itm_accuracy, recall_at_k, vqa_score
from moil.objectives.tasks import (
    ContrastiveRetrieval,
    ImageTextMatching,
    PairClassification,
    VQAScore,
)

__all__ = [
    # imitation
    "imitation_loss",
    "squared_frobenius_distance",
    "frobenius_distance",
    "second_moment",
    "data_aware_imitation_loss",
    "output_error",
    # bounds
    "spectral_norm",
    "LayerOutputBound",
    "layer_output_bound",
    "network_bound",
    "LowRankFit",
    "best_low_rank",
    "eckart_young",
    # task losses
    "ImageTextMatching",
    "ContrastiveRetrieval",
    "VQAScore",
    "PairClassification",
    # metrics
    "itm_accuracy",
    "vqa_score",
    "Recall",
    "recall_at_k",
]
