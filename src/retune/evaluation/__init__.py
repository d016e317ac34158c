"""Honest evaluation: masked multi-label metrics with patient-level bootstrap CIs, retrieval and continual-learning
scores."""

from retune.evaluation.metrics import (
    ClassMetrics,
    EvaluationResult,
    average_incremental,
    continual_metrics,
    evaluate_scores,
    fast_mean_auroc,
    forgetting_and_bwt,
    roc_curve_points,
)
from retune.evaluation.retrieval import recall_at_k, retrieval_metrics

__all__ = [
    "ClassMetrics",
    "EvaluationResult",
    "average_incremental",
    "continual_metrics",
    "evaluate_scores",
    "fast_mean_auroc",
    "forgetting_and_bwt",
    "recall_at_k",
    "retrieval_metrics",
    "roc_curve_points",
]
