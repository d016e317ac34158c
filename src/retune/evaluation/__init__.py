"""Honest evaluation: masked multi-label metrics with patient-level bootstrap CIs, retrieval and continual-learning scores."""

from retune.evaluation.metrics import (
    ClassMetrics,
    EvaluationResult,
    average_incremental,
    DEFAULT_MIN_POSITIVES,
    continual_metrics,
    evaluate_scores,
    fast_mean_auroc,
    forgetting_and_bwt,
    per_class_forgetting_and_bwt,
    positive_counts,
    recall_at_k,
    roc_curve_points,
)

__all__ = [
    "ClassMetrics",
    "EvaluationResult",
    "average_incremental",
    "DEFAULT_MIN_POSITIVES",
    "continual_metrics",
    "evaluate_scores",
    "fast_mean_auroc",
    "forgetting_and_bwt",
    "per_class_forgetting_and_bwt",
    "positive_counts",
    "recall_at_k",
    "roc_curve_points",
]
