"""Honest multi-label metrics: masked labels, undefined classes kept undefined, patient-level bootstrap CIs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

MIN_VALID_REPLICATE_FRACTION = 0.5  # below this share of usable replicates a CI is reported as None


@dataclass
class ClassMetrics:
    """AUROC/AUPRC of one class with percentile CIs; None means undefined (single-class data), never a guess."""

    auroc: float | None
    auroc_ci: tuple[float, float] | None
    auprc: float | None
    auprc_ci: tuple[float, float] | None
    n_pos: int
    n_neg: int

    def to_dict(self) -> dict:
        """JSON-ready dict; undefined values become null."""
        return {
            "auroc": self.auroc,
            "auroc_ci": _ci_to_list(self.auroc_ci),
            "auprc": self.auprc,
            "auprc_ci": _ci_to_list(self.auprc_ci),
            "n_pos": self.n_pos,
            "n_neg": self.n_neg,
        }


@dataclass
class EvaluationResult:
    """Per-class metrics, mean AUROC over defined classes and everything needed to reproduce the CIs."""

    classes: list[str]
    per_class: dict[str, ClassMetrics]
    mean_auroc: float | None
    mean_auroc_ci: tuple[float, float] | None
    n_images: int
    n_patients: int
    n_bootstrap: int
    seed: int
    undefined_classes: list[str]
    ci_level: float = 0.95

    def to_dict(self) -> dict:
        """JSON-ready dict with per-class entries keyed by class name."""
        return {
            "classes": list(self.classes),
            "per_class": {name: self.per_class[name].to_dict() for name in self.classes},
            "mean_auroc": self.mean_auroc,
            "mean_auroc_ci": _ci_to_list(self.mean_auroc_ci),
            "n_images": self.n_images,
            "n_patients": self.n_patients,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "ci_level": self.ci_level,
            "undefined_classes": list(self.undefined_classes),
        }


def evaluate_scores(
    scores: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    patients: np.ndarray | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> EvaluationResult:
    """Per-class AUROC/AUPRC (NaN labels left out) with CIs from a bootstrap over patients.

    ``patients=None`` treats every row as its own patient. Classes without both positives and
    negatives are undefined (None) and left out of the mean AUROC.
    """
    scores, labels = _check_inputs(scores, labels, classes, n_bootstrap, ci)
    patient_codes = _patient_codes(patients, len(scores))
    n_patients = int(patient_codes.max()) + 1 if len(patient_codes) else 0

    auroc, auprc = _point_estimates(scores, labels)
    defined = ~np.isnan(auroc)
    boot_auroc, boot_auprc, boot_mean = _bootstrap(scores, labels, patient_codes, defined, n_bootstrap, seed)

    per_class = {}
    for c, name in enumerate(classes):
        valid = labels[:, c][~np.isnan(labels[:, c])]
        per_class[name] = ClassMetrics(
            auroc=_float_or_none(auroc[c]),
            auroc_ci=_percentile_ci(boot_auroc[:, c], n_bootstrap, ci) if defined[c] else None,
            auprc=_float_or_none(auprc[c]),
            auprc_ci=_percentile_ci(boot_auprc[:, c], n_bootstrap, ci) if defined[c] else None,
            n_pos=int((valid == 1).sum()),
            n_neg=int((valid == 0).sum()),
        )
    return EvaluationResult(
        classes=list(classes),
        per_class=per_class,
        mean_auroc=float(auroc[defined].mean()) if defined.any() else None,
        mean_auroc_ci=_percentile_ci(boot_mean, n_bootstrap, ci) if defined.any() else None,
        n_images=len(scores),
        n_patients=n_patients,
        n_bootstrap=n_bootstrap,
        seed=seed,
        undefined_classes=[name for c, name in enumerate(classes) if not defined[c]],
        ci_level=ci,
    )


def fast_mean_auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean AUROC over defined classes without CIs: the cheap score for early stopping."""
    auroc, _ = _rank_auroc_auprc(np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64))
    return _mean_or_none([value for value in auroc if not np.isnan(value)])


def roc_curve_points(scores_col: np.ndarray, labels_col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of one class for plotting, with masked (NaN) labels dropped; raises if the curve is undefined."""
    scores_col = np.asarray(scores_col, dtype=np.float64).ravel()
    labels_col = np.asarray(labels_col, dtype=np.float64).ravel()
    valid = ~np.isnan(labels_col)
    kept = labels_col[valid]
    if not ((kept == 1).any() and (kept == 0).any()):
        raise ValueError("ROC curve is undefined: the class needs both positive and negative labels")
    fpr, tpr, _ = roc_curve(kept, scores_col[valid])
    return fpr, tpr


def forgetting_and_bwt(matrix: np.ndarray) -> tuple[float | None, float | None]:
    """Average forgetting and backward transfer from R[t][c] = AUROC after task t on class c (NaN = unseen/undefined).

    Forgetting: best earlier AUROC minus final AUROC; BWT: final AUROC minus AUROC right after the class was learned.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError("matrix must be 2-D (tasks x classes)")
    if matrix.shape[0] < 2:
        return None, None
    earlier, final = matrix[:-1], matrix[-1]
    forgetting, transfer = [], []
    for c in range(matrix.shape[1]):
        seen = ~np.isnan(earlier[:, c])
        if not seen.any() or np.isnan(final[c]):
            continue
        forgetting.append(earlier[seen, c].max() - final[c])
        transfer.append(final[c] - earlier[np.argmax(seen), c])
    return _mean_or_none(forgetting), _mean_or_none(transfer)


def auroc_matrix(scores_per_task: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """R[t][c]: AUROC after task t on class c; NaN where c was not yet learned (NaN scores) or is undefined."""
    matrix = np.full((len(scores_per_task), labels.shape[1]), np.nan)
    for t, scores in enumerate(scores_per_task):
        seen = ~np.isnan(scores).any(axis=0)
        if seen.any():
            matrix[t, seen] = _rank_auroc_auprc(scores[:, seen], labels[:, seen])[0]
    return matrix


def _final_mean(matrix: np.ndarray) -> float | None:
    final = matrix[-1][~np.isnan(matrix[-1])]
    return float(final.mean()) if len(final) else None


def continual_metrics(
    scores_per_task: list[np.ndarray],
    labels: np.ndarray,
    patients: np.ndarray | None = None,
    n_bootstrap: int = 500,
    seed: int = 0,
    ci: float = 0.95,
) -> dict:
    """AUROC matrix, mean AUROC after each task, average incremental AUROC, forgetting and BWT.

    ``scores_per_task[t]`` holds test-split probabilities after task t (NaN columns: unseen classes).
    Final mean AUROC, forgetting and BWT get percentile CIs from a bootstrap over patients.
    """
    labels = np.asarray(labels, dtype=np.float64)
    scores_per_task = [np.asarray(s, dtype=np.float64) for s in scores_per_task]
    matrix = auroc_matrix(scores_per_task, labels)
    mean_per_task = [_mean_or_none([v for v in row if not np.isnan(v)]) for row in matrix]
    forgetting, bwt = forgetting_and_bwt(matrix)
    replicates = np.full((n_bootstrap, 3), np.nan)
    for b, rows in enumerate(patient_resamples(_patient_codes(patients, len(labels)), n_bootstrap, seed)):
        boot = auroc_matrix([s[rows] for s in scores_per_task], labels[rows])
        boot[:, np.isnan(matrix).all(axis=0)] = np.nan
        replicates[b] = [np.nan if v is None else v for v in (_final_mean(boot), *forgetting_and_bwt(boot))]
    return {
        "auroc_matrix": [[_float_or_none(v) for v in row] for row in matrix],
        "mean_auroc_per_task": mean_per_task,
        "average_incremental_auroc": average_incremental(mean_per_task),
        "final_mean_auroc": _final_mean(matrix),
        "final_mean_auroc_ci": _ci_to_list(_percentile_ci(replicates[:, 0], n_bootstrap, ci)),
        "forgetting": forgetting,
        "forgetting_ci": _ci_to_list(_percentile_ci(replicates[:, 1], n_bootstrap, ci))
        if forgetting is not None
        else None,
        "bwt": bwt,
        "bwt_ci": _ci_to_list(_percentile_ci(replicates[:, 2], n_bootstrap, ci)) if bwt is not None else None,
        "n_bootstrap": n_bootstrap,
        "ci_level": ci,
    }


def average_incremental(mean_per_task: list[float | None]) -> float | None:
    """Average incremental AUROC: mean of the per-task mean AUROCs that are defined."""
    return _mean_or_none([v for v in mean_per_task if v is not None and not np.isnan(v)])


def _check_inputs(
    scores: np.ndarray, labels: np.ndarray, classes: list[str], n_bootstrap: int, ci: float
) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes and values up front so metric code never sees malformed input."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must be equal-shaped 2-D arrays")
    if scores.shape[1] != len(classes):
        raise ValueError(f"{scores.shape[1]} score columns but {len(classes)} class names")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    known = labels[~np.isnan(labels)]
    if not np.isin(known, (0.0, 1.0)).all():
        raise ValueError("labels must be 1.0, 0.0 or NaN (masked)")
    if n_bootstrap < 0:
        raise ValueError("n_bootstrap must be >= 0")
    if not 0.0 < ci < 1.0:
        raise ValueError("ci must lie strictly between 0 and 1")
    return scores, labels


def _patient_codes(patients: np.ndarray | None, n_rows: int) -> np.ndarray:
    """Integer patient id per row (0..P-1); each row is its own patient when none are given."""
    if patients is None:
        return np.arange(n_rows)
    patients = np.asarray(patients)
    if patients.shape != (n_rows,):
        raise ValueError(f"patients has shape {patients.shape}; expected ({n_rows},)")
    return np.unique(patients, return_inverse=True)[1].ravel()


def _point_estimates(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference AUROC/AUPRC per class from sklearn on the unmasked rows; NaN where undefined."""
    n_classes = scores.shape[1]
    auroc = np.full(n_classes, np.nan)
    auprc = np.full(n_classes, np.nan)
    for c in range(n_classes):
        valid = ~np.isnan(labels[:, c])
        y = labels[valid, c]
        if (y == 1).any() and (y == 0).any():
            auroc[c] = roc_auc_score(y, scores[valid, c])
            auprc[c] = average_precision_score(y, scores[valid, c])
    return auroc, auprc


def _rank_auroc_auprc(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise AUROC (Mann-Whitney U, ties averaged) and AUPRC (sklearn's average precision) from ranks.

    Masked rows are pushed to +inf so they rank last and do not disturb the valid rows; NaN where undefined.
    """
    valid = ~np.isnan(labels)
    pos = labels == 1
    n_pos = pos.sum(axis=0)
    n_neg = valid.sum(axis=0) - n_pos
    defined = (n_pos > 0) & (n_neg > 0)

    ranks = rankdata(np.where(valid, scores, np.inf), axis=0)
    u = np.where(pos, ranks, 0.0).sum(axis=0) - n_pos * (n_pos + 1) / 2.0

    # Precision at each positive's threshold: positives scoring >= it over all rows scoring >= it.
    at_or_above = rankdata(np.where(valid, -scores, np.inf), method="max", axis=0)
    pos_at_or_above = rankdata(np.where(pos, -scores, np.inf), method="max", axis=0)
    precision_sum = np.where(pos, pos_at_or_above / at_or_above, 0.0).sum(axis=0)

    with np.errstate(divide="ignore", invalid="ignore"):
        auroc = np.where(defined, u / (n_pos * n_neg), np.nan)
        auprc = np.where(defined, precision_sum / n_pos, np.nan)
    return auroc, auprc


def _bootstrap(
    scores: np.ndarray,
    labels: np.ndarray,
    patient_codes: np.ndarray,
    defined: np.ndarray,
    n_bootstrap: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replicate AUROC/AUPRC per class (B x C) and mean AUROC (B) from resampling whole patients.

    A class that turns single-class in a replicate is NaN there; the mean is NaN unless every class
    defined on the full data is defined in the replicate.
    """
    n_classes = scores.shape[1]
    boot_auroc = np.full((n_bootstrap, n_classes), np.nan)
    boot_auprc = np.full((n_bootstrap, n_classes), np.nan)
    boot_mean = np.full(n_bootstrap, np.nan)
    if n_bootstrap == 0 or len(scores) == 0:
        return boot_auroc, boot_auprc, boot_mean

    for b, rows in enumerate(patient_resamples(patient_codes, n_bootstrap, seed)):
        boot_auroc[b], boot_auprc[b] = _rank_auroc_auprc(scores[rows], labels[rows])
        if defined.any() and not np.isnan(boot_auroc[b, defined]).any():
            boot_mean[b] = boot_auroc[b, defined].mean()
    return boot_auroc, boot_auprc, boot_mean


def patient_resamples(patient_codes: np.ndarray, n_bootstrap: int, seed: int):
    """Yield B arrays of row indices, each from resampling whole patients with replacement."""
    rows_by_patient = np.argsort(patient_codes, kind="stable")
    sizes = np.bincount(patient_codes)
    starts = np.cumsum(sizes) - sizes
    n_patients = len(sizes)
    rng = np.random.default_rng(seed)
    for _ in range(n_bootstrap):
        picked = rng.integers(0, n_patients, n_patients)
        counts = sizes[picked]
        first = np.repeat(starts[picked], counts)
        offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        yield rows_by_patient[first + offset]


def _percentile_ci(replicates: np.ndarray, n_bootstrap: int, ci: float) -> tuple[float, float] | None:
    """Percentile interval over the usable replicates; None when fewer than half of B are usable."""
    usable = replicates[~np.isnan(replicates)]
    if n_bootstrap == 0 or len(usable) < MIN_VALID_REPLICATE_FRACTION * n_bootstrap:
        return None
    tail = (1.0 - ci) / 2.0
    low, high = np.quantile(usable, [tail, 1.0 - tail])
    return float(low), float(high)


def _float_or_none(value: float) -> float | None:
    """NaN (undefined) becomes None so it serialises as null."""
    return None if np.isnan(value) else float(value)


def _mean_or_none(values: list[float]) -> float | None:
    """Mean of a list, or None when it is empty."""
    return float(np.mean(values)) if values else None


def _ci_to_list(interval: tuple[float, float] | None) -> list[float] | None:
    """A CI as a JSON list, or None."""
    return None if interval is None else [interval[0], interval[1]]
