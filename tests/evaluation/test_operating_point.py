"""Operating points chosen on validation (not test) and calibration bins."""

from __future__ import annotations

import numpy as np
import pytest

from retune.evaluation.operating_point import calibration_bins, operating_points, youden_threshold


def test_threshold_comes_from_validation_and_is_applied_unchanged_to_test():
    val_scores = np.array([[0.1], [0.2], [0.6], [0.7]])
    val_labels = np.array([[0], [0], [1], [1]], dtype=float)
    assert youden_threshold(val_scores[:, 0], val_labels[:, 0]) == pytest.approx(0.6)
    # on test the positives score 0.5: a test-tuned threshold would reach sensitivity 1, the validation one gives 0
    test_scores = np.array([[0.1], [0.5], [0.5], [0.2]])
    test_labels = np.array([[0], [1], [1], [0]], dtype=float)
    point = operating_points(val_scores, val_labels, test_scores, test_labels, ["Effusion"])["Effusion"]
    assert point["threshold"] == pytest.approx(0.6)
    assert point["sensitivity"] == 0.0 and point["specificity"] == 1.0


def test_operating_point_is_undefined_without_both_classes_in_validation():
    point = operating_points(
        np.array([[0.3], [0.4]]), np.array([[0], [np.nan]]), np.array([[0.3]]), np.array([[1.0]]), ["Hernia"]
    )
    assert point["Hernia"] == {"threshold": None, "sensitivity": None, "specificity": None}


def test_calibration_error_separates_calibrated_from_overconfident_scores():
    rng = np.random.default_rng(0)
    probabilities = rng.random((4000, 1))
    labels = (rng.random((4000, 1)) < probabilities).astype(float)
    calibrated = calibration_bins(probabilities, labels)
    overconfident = calibration_bins(np.where(probabilities > 0.5, 0.99, 0.01), labels)
    assert calibrated["ece"] < 0.05 < overconfident["ece"]
    assert sum(calibrated["counts"]) == 4000
