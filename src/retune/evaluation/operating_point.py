"""Sensitivity and specificity at an operating point chosen on validation rows, and calibration bins.

AUROC says how well a model ranks; a user who acts on its probabilities needs a threshold. The threshold
is chosen per class on the validation split (maximum Youden's J = sensitivity + specificity - 1) and then
applied unchanged to the test split, so the test numbers are not tuned on test.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve


def youden_threshold(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """The score threshold maximising sensitivity + specificity - 1 (None without both classes)."""
    valid = ~np.isnan(labels)
    if len(np.unique(labels[valid])) < 2:
        return None
    fpr, tpr, thresholds = roc_curve(labels[valid], scores[valid])
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


THRESHOLD_RULE = "Youden's J (sensitivity + specificity - 1) maximised per class on the validation split"


def decision_thresholds(val_scores: np.ndarray, val_labels: np.ndarray, classes: list[str]) -> dict:
    """The thresholds a run stores for its yes/no decisions, with how they were chosen: ``{"rule", "thresholds"}``;
    a class without positives and negatives in validation gets none (its decision stays undefined)."""
    chosen = {name: youden_threshold(val_scores[:, index], val_labels[:, index]) for index, name in enumerate(classes)}
    return {"rule": THRESHOLD_RULE, "thresholds": {name: value for name, value in chosen.items() if value is not None}}


def sensitivity_specificity(
    scores: np.ndarray, labels: np.ndarray, threshold: float
) -> tuple[float | None, float | None]:
    """(sensitivity, specificity) of ``scores >= threshold`` on the labelled rows; None where undefined."""
    valid = ~np.isnan(labels)
    predicted, truth = scores[valid] >= threshold, labels[valid] == 1
    positives, negatives = truth.sum(), (~truth).sum()
    sensitivity = float((predicted & truth).sum() / positives) if positives else None
    specificity = float((~predicted & ~truth).sum() / negatives) if negatives else None
    return sensitivity, specificity


def operating_points(
    val_scores: np.ndarray,
    val_labels: np.ndarray,
    test_scores: np.ndarray,
    test_labels: np.ndarray,
    classes: list[str],
) -> dict[str, dict]:
    """Per class: the validation-chosen threshold and the test sensitivity/specificity at it."""
    points = {}
    for column, name in enumerate(classes):
        threshold = youden_threshold(val_scores[:, column], val_labels[:, column])
        sensitivity, specificity = (
            (None, None)
            if threshold is None
            else sensitivity_specificity(test_scores[:, column], test_labels[:, column], threshold)
        )
        points[name] = {"threshold": threshold, "sensitivity": sensitivity, "specificity": specificity}
    return points


def calibration_bins(scores: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> dict:
    """Reliability-diagram data over every labelled (image, class) pair: mean predicted vs observed rate per bin,
    and the expected calibration error (count-weighted mean |observed - predicted|)."""
    valid = ~np.isnan(labels)
    predicted, truth = scores[valid].astype(float), labels[valid].astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(predicted, edges[1:-1]), 0, n_bins - 1)
    mean_predicted, observed, counts = [], [], []
    for index in range(n_bins):
        chosen = which == index
        counts.append(int(chosen.sum()))
        mean_predicted.append(float(predicted[chosen].mean()) if chosen.any() else None)
        observed.append(float(truth[chosen].mean()) if chosen.any() else None)
    total = max(sum(counts), 1)
    error = sum(n * abs(o - p) for n, o, p in zip(counts, observed, mean_predicted) if n) / total
    return {"mean_predicted": mean_predicted, "observed": observed, "counts": counts, "ece": float(error)}
