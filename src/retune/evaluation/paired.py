"""Paired comparison of two models on the same images: the AUROC difference with a patient-bootstrap CI.

Both models are scored on every bootstrap replicate of the same resampled patients, so the CI of the
difference is much narrower than comparing two separate CIs, and answers "is A better than B here?".
"""

from __future__ import annotations

import numpy as np

from retune.evaluation.metrics import (
    _patient_codes,
    _percentile_ci,
    _rank_auroc_auprc,
    patient_resamples,
    positive_counts,
)


def paired_auroc_difference(
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    patients: np.ndarray | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    min_positives: int = 1,
) -> dict:
    """Mean AUROC of A minus B over the classes defined for both with ``min_positives`` positives or more (the rule
    of every other mean), per-class differences of every defined class, and their paired CIs."""
    scores_a, scores_b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if scores_a.shape != labels.shape or scores_b.shape != labels.shape:
        raise ValueError(
            f"scores {scores_a.shape} / {scores_b.shape} and labels {labels.shape} must have the same shape"
        )
    codes = _patient_codes(patients, len(labels))
    auroc_a, _ = _rank_auroc_auprc(scores_a, labels)
    auroc_b, _ = _rank_auroc_auprc(scores_b, labels)
    defined = ~np.isnan(auroc_a) & ~np.isnan(auroc_b)
    in_mean = defined & (positive_counts(labels) >= min_positives)
    boot_class = np.full((n_bootstrap, len(classes)), np.nan)
    boot_mean = np.full(n_bootstrap, np.nan)
    for b, rows in enumerate(patient_resamples(codes, n_bootstrap, seed) if len(labels) else []):
        replicate_a, _ = _rank_auroc_auprc(scores_a[rows], labels[rows])
        replicate_b, _ = _rank_auroc_auprc(scores_b[rows], labels[rows])
        boot_class[b] = replicate_a - replicate_b
        if in_mean.any() and not np.isnan(boot_class[b, in_mean]).any():
            boot_mean[b] = boot_class[b, in_mean].mean()
    per_class = {}
    for column, name in enumerate(classes):
        interval = _percentile_ci(boot_class[:, column], n_bootstrap, ci) if defined[column] else None
        per_class[name] = {
            "difference": float(auroc_a[column] - auroc_b[column]) if defined[column] else None,
            "difference_ci": list(interval) if interval else None,
        }
    mean_interval = _percentile_ci(boot_mean, n_bootstrap, ci) if in_mean.any() else None
    return {
        "mean_auroc_a": float(auroc_a[in_mean].mean()) if in_mean.any() else None,
        "mean_auroc_b": float(auroc_b[in_mean].mean()) if in_mean.any() else None,
        "difference": float((auroc_a[in_mean] - auroc_b[in_mean]).mean()) if in_mean.any() else None,
        "difference_ci": list(mean_interval) if mean_interval else None,
        "classes": list(classes),
        "classes_in_mean": [name for column, name in enumerate(classes) if in_mean[column]],
        "n_classes_in_mean": int(in_mean.sum()),
        "min_positives": min_positives,
        "too_few_positives": [name for column, name in enumerate(classes) if defined[column] and not in_mean[column]],
        "undefined_classes": [name for column, name in enumerate(classes) if not defined[column]],
        "per_class": per_class,
        "n_images": int(len(labels)),
        "n_patients": int(codes.max()) + 1 if len(codes) else 0,
        "n_bootstrap": n_bootstrap,
        "ci_level": ci,
    }
