"""Honest evaluation: masked multi-label metrics with patient-level bootstrap CIs, retrieval and continual-learning
scores."""

from retune.evaluation.metrics import (
    DEFAULT_MIN_POSITIVES,
    ClassMetrics,
    EvaluationResult,
    average_incremental,
    continual_metrics,
    evaluate_scores,
    fast_mean_auroc,
    forgetting_and_bwt,
    mean_and_sd,
    per_class_forgetting_and_bwt,
    positive_counts,
    roc_curve_points,
)
from retune.evaluation.retrieval import recall_at_k, retrieval_metrics

__all__ = [
    "ClassMetrics",
    "EvaluationResult",
    "average_incremental",
    "DEFAULT_MIN_POSITIVES",
    "continual_metrics",
    "evaluate_scores",
    "fast_mean_auroc",
    "forgetting_and_bwt",
    "mean_and_sd",
    "per_class_forgetting_and_bwt",
    "positive_counts",
    "recall_at_k",
    "retrieval_metrics",
    "roc_curve_points",
]
