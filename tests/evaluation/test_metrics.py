"""Metrics must match sklearn, keep undefined classes undefined and bootstrap over patients, not rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from retune.evaluation import (
    average_incremental,
    evaluate_scores,
    forgetting_and_bwt,
    recall_at_k,
    roc_curve_points,
)
from retune.evaluation.metrics import _percentile_ci, _rank_auroc_auprc


def _noisy(n: int, seed: int, signal: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """One class with balanced labels and scores that separate them only partly."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(float)[:, None]
    scores = labels * signal + rng.normal(size=(n, 1))
    return scores, labels


def _width(interval: tuple[float, float]) -> float:
    return interval[1] - interval[0]


def test_rank_metrics_match_sklearn_with_ties_masks_and_duplicates():
    rng = np.random.default_rng(1)
    scores = np.round(rng.random((200, 6)), 1)  # only 11 distinct values: many ties
    labels = (rng.random((200, 6)) < 0.3).astype(float)
    labels[rng.random((200, 6)) < 0.2] = np.nan
    rows = rng.integers(0, 200, 300)  # duplicated rows, as in a bootstrap replicate
    scores, labels = scores[rows], labels[rows]

    auroc, auprc = _rank_auroc_auprc(scores, labels)

    for c in range(6):
        valid = ~np.isnan(labels[:, c])
        assert auroc[c] == pytest.approx(roc_auc_score(labels[valid, c], scores[valid, c]), abs=1e-12)
        assert auprc[c] == pytest.approx(average_precision_score(labels[valid, c], scores[valid, c]), abs=1e-12)


def test_rank_metrics_are_nan_for_single_class_columns():
    auroc, auprc = _rank_auroc_auprc(np.array([[0.1], [0.9]]), np.array([[0.0], [np.nan]]))
    assert np.isnan(auroc[0]) and np.isnan(auprc[0])


def test_nan_labels_are_left_out():
    scores = np.array([[0.9], [0.8], [0.2], [0.1], [0.95], [0.05]])
    labels = np.array([[1.0], [1.0], [0.0], [0.0], [np.nan], [np.nan]])
    # Had the masked rows counted as negatives, the 0.95 row would break the perfect ranking.
    result = evaluate_scores(scores, labels, ["a"], n_bootstrap=0)
    metrics = result.per_class["a"]
    assert metrics.auroc == 1.0
    assert (metrics.n_pos, metrics.n_neg) == (2, 2)
    assert result.n_images == 6


def test_class_without_positives_is_undefined_and_left_out_of_the_mean():
    rng = np.random.default_rng(2)
    scores = rng.random((40, 2))
    labels = np.stack([np.arange(40) % 2, np.zeros(40)], axis=1).astype(float)

    result = evaluate_scores(scores, labels, ["has_both", "no_pos"], n_bootstrap=100)

    undefined = result.per_class["no_pos"]
    assert undefined.auroc is None and undefined.auprc is None
    assert undefined.auroc_ci is None and undefined.auprc_ci is None
    assert result.undefined_classes == ["no_pos"]
    assert result.mean_auroc == pytest.approx(result.per_class["has_both"].auroc)
    as_json = json.loads(json.dumps(result.to_dict()))
    assert as_json["per_class"]["no_pos"]["auroc"] is None
    assert as_json["per_class"]["no_pos"]["auroc_ci"] is None
    assert as_json["per_class"]["no_pos"]["n_pos"] == 0
    assert as_json["undefined_classes"] == ["no_pos"]


def test_no_defined_class_gives_no_mean():
    result = evaluate_scores(np.array([[0.3], [0.6]]), np.array([[1.0], [1.0]]), ["a"], n_bootstrap=20)
    assert result.mean_auroc is None and result.mean_auroc_ci is None
    assert result.to_dict()["mean_auroc"] is None


def test_perfect_separation_gives_one_with_ci_up_to_one():
    labels = (np.arange(60) % 2).astype(float)[:, None]
    scores = labels + 0.01 * np.arange(60)[:, None] / 60

    result = evaluate_scores(scores, labels, ["a"], n_bootstrap=200)

    metrics = result.per_class["a"]
    assert metrics.auroc == 1.0 and metrics.auprc == 1.0
    assert metrics.auroc_ci == (1.0, 1.0)
    assert result.mean_auroc_ci[1] == 1.0
    assert result.to_dict()["per_class"]["a"]["auroc_ci"] == [1.0, 1.0]


def test_ci_contains_the_estimate_and_narrows_with_more_data():
    small = evaluate_scores(*_noisy(80, seed=3), ["a"], n_bootstrap=500).per_class["a"]
    large = evaluate_scores(*_noisy(2000, seed=3), ["a"], n_bootstrap=500).per_class["a"]

    for metrics in (small, large):
        assert 0.5 < metrics.auroc < 1.0
        assert metrics.auroc_ci[0] < metrics.auroc < metrics.auroc_ci[1]
        assert metrics.auprc_ci[0] < metrics.auprc < metrics.auprc_ci[1]
    assert _width(large.auroc_ci) < 0.5 * _width(small.auroc_ci)


def test_patient_bootstrap_is_wider_than_row_bootstrap_for_duplicated_images():
    scores, labels = _noisy(40, seed=4)
    copies = 10  # every patient has ten identical images
    scores, labels = np.repeat(scores, copies, axis=0), np.repeat(labels, copies, axis=0)
    patients = np.repeat([f"p{i}" for i in range(40)], copies)

    by_patient = evaluate_scores(scores, labels, ["a"], patients=patients, n_bootstrap=500)
    by_row = evaluate_scores(scores, labels, ["a"], n_bootstrap=500)

    assert by_patient.n_patients == 40 and by_row.n_patients == 400
    assert by_patient.per_class["a"].auroc == by_row.per_class["a"].auroc
    assert _width(by_patient.per_class["a"].auroc_ci) > 2 * _width(by_row.per_class["a"].auroc_ci)


def test_bootstrap_is_deterministic_by_seed():
    scores, labels = _noisy(100, seed=5)
    first = evaluate_scores(scores, labels, ["a"], n_bootstrap=200, seed=7)
    again = evaluate_scores(scores, labels, ["a"], n_bootstrap=200, seed=7)
    other = evaluate_scores(scores, labels, ["a"], n_bootstrap=200, seed=8)

    assert first.to_dict() == again.to_dict()
    assert first.per_class["a"].auroc_ci != other.per_class["a"].auroc_ci
    assert first.seed == 7 and first.n_bootstrap == 200


def test_ci_is_none_when_too_few_replicates_are_usable():
    mostly_undefined = np.array([0.7] * 49 + [np.nan] * 51)
    half_usable = np.array([0.7] * 50 + [np.nan] * 50)
    assert _percentile_ci(mostly_undefined, n_bootstrap=100, ci=0.95) is None
    assert _percentile_ci(half_usable, n_bootstrap=100, ci=0.95) == (0.7, 0.7)


def test_invalid_inputs_are_rejected():
    with pytest.raises(ValueError, match="labels must be"):
        evaluate_scores(np.zeros((2, 1)), np.array([[2.0], [0.0]]), ["a"])
    with pytest.raises(ValueError, match="class names"):
        evaluate_scores(np.zeros((2, 1)), np.zeros((2, 1)), ["a", "b"])
    with pytest.raises(ValueError, match="patients"):
        evaluate_scores(np.zeros((2, 1)), np.zeros((2, 1)), ["a"], patients=np.array(["p"]))


def test_roc_curve_points_drop_masked_rows():
    scores = np.array([0.9, 0.4, 0.6, 0.2, 0.99])
    labels = np.array([1.0, 1.0, 0.0, 0.0, np.nan])

    fpr, tpr = roc_curve_points(scores, labels)

    expected_fpr, expected_tpr, _ = roc_curve(labels[:4], scores[:4])
    np.testing.assert_array_equal(fpr, expected_fpr)
    np.testing.assert_array_equal(tpr, expected_tpr)
    with pytest.raises(ValueError, match="undefined"):
        roc_curve_points(scores, np.array([1.0, 1.0, np.nan, np.nan, 1.0]))


def test_recall_at_k_identity_is_perfect():
    assert recall_at_k(np.eye(12)) == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0}


def test_recall_at_k_crafted_ranks():
    similarity = np.array(
        [
            [0.9, 0.1, 0.2, 0.3],  # correct candidate 0 ranks 1st
            [0.8, 0.1, 0.7, 0.6],  # correct candidate 1 ranks 4th
            [0.1, 0.9, 0.5, 0.2],  # correct candidate 2 ranks 2nd
            [0.5, 0.5, 0.5, 0.5],  # all tied: counted as ranking last
        ]
    )
    assert recall_at_k(similarity, ks=(1, 2, 3, 4)) == {"R@1": 0.25, "R@2": 0.5, "R@3": 0.5, "R@4": 1.0}
    # Explicit positives: query 1 now points at candidate 0, which is its best match.
    assert recall_at_k(similarity, ks=(1,), positives=np.array([0, 0, 2, 3])) == {"R@1": 0.5}


def test_forgetting_and_bwt_on_hand_built_matrix():
    nan = np.nan
    matrix = np.array(
        [
            [0.80, nan, nan],  # task 0 introduces class 0
            [0.90, 0.70, nan],  # task 1 introduces class 1
            [0.75, 0.72, 0.85],  # final task introduces class 2 (not counted)
        ]
    )
    forgetting, bwt = forgetting_and_bwt(matrix)
    # Class 0: max(0.80, 0.90) - 0.75 = 0.15; class 1: 0.70 - 0.72 = -0.02.
    assert forgetting == pytest.approx((0.15 - 0.02) / 2)
    # Class 0: 0.75 - 0.80 = -0.05; class 1: 0.72 - 0.70 = 0.02.
    assert bwt == pytest.approx((-0.05 + 0.02) / 2)


def test_forgetting_and_bwt_need_two_tasks():
    assert forgetting_and_bwt(np.array([[0.8, 0.7]])) == (None, None)
    assert forgetting_and_bwt(np.array([[np.nan], [0.8]])) == (None, None)


def test_average_incremental_skips_undefined_tasks():
    assert average_incremental([0.8, None, 0.6, float("nan")]) == pytest.approx(0.7)
    assert average_incremental([None]) is None


def test_min_positives_keeps_rare_classes_out_of_the_mean_but_listed():
    """A class with 2 positives keeps its per-class AUROC, is marked, and does not move the mean."""
    rng = np.random.default_rng(0)
    labels = np.zeros((200, 2))
    labels[:50, 0] = 1
    labels[:2, 1] = 1
    scores = np.column_stack([labels[:, 0] + rng.normal(size=200), 1 - labels[:, 1] + rng.normal(size=200) * 0.01])
    strict = evaluate_scores(scores, labels, ["common", "rare"], n_bootstrap=50, min_positives=10)
    loose = evaluate_scores(scores, labels, ["common", "rare"], n_bootstrap=50, min_positives=1)
    assert strict.too_few_positives == ["rare"] and strict.n_classes_in_mean == 1
    assert strict.mean_auroc == pytest.approx(strict.per_class["common"].auroc)
    assert strict.per_class["rare"].auroc == loose.per_class["rare"].auroc < 0.1
    assert loose.mean_auroc < strict.mean_auroc
    assert strict.to_dict()["too_few_positives"] == ["rare"]


def test_continual_metrics_count_only_classes_with_enough_positives():
    """Forgetting driven by a one-positive class vanishes from the mean and stays visible per class."""
    from retune.evaluation import continual_metrics

    rng = np.random.default_rng(1)
    labels = np.zeros((300, 2))
    labels[:60, 0] = 1
    labels[0, 1] = 1
    good = np.column_stack([labels[:, 0] + rng.normal(size=300) * 0.5, labels[:, 1] + rng.normal(size=300) * 0.01])
    broken = good.copy()
    broken[:, 1] = -broken[:, 1]  # the rare class flips after task 2
    metrics = continual_metrics([good, broken], labels, n_bootstrap=40, min_positives=10)
    assert metrics["forgetting"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["too_few_positives"] == [1] and metrics["n_classes_in_mean"] == 1
    assert metrics["forgetting_per_class"][1]["value"] > 0.9
    assert metrics["n_test_positives"] == [60, 1]
    assert continual_metrics([good, broken], labels, n_bootstrap=0, min_positives=1)["forgetting"] > 0.45
