"""Segmentation metrics against hand-computed values, the empty-mask convention and its predict-nothing twin."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from retune.evaluation.segmentation import hd95, score_mask, summarize


def _mask(shape, *cells) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for row, column in cells:
        mask[row, column] = True
    return mask


def test_dice_iou_and_hd95_match_hand_computed_values():
    truth = np.zeros((6, 6), np.int8)
    truth[1:3, 1:3] = 1  # 4 pixels
    predicted = _mask((6, 6), (1, 1), (1, 2), (1, 3))  # 2 of them + 1 outside
    scores = score_mask(predicted, truth)
    assert scores["dice"] == pytest.approx(2 * 2 / (3 + 4))
    assert scores["iou"] == pytest.approx(2 / 5)
    assert scores["present"] and not scores["predicted_empty"]
    # one point each, 3 columns apart: every percentile of the distances is 3
    assert hd95(_mask((5, 5), (1, 1)), _mask((5, 5), (1, 4))) == pytest.approx(3.0)


def test_ignore_pixels_count_nowhere():
    truth = np.zeros((4, 4), np.int8)
    truth[0, 0:2] = 1
    truth[3, 3] = -1
    predicted = _mask((4, 4), (0, 0), (0, 1), (3, 3))  # the extra pixel lies on ignore
    assert score_mask(predicted, truth)["dice"] == pytest.approx(1.0)


def test_empty_truth_convention_and_predict_nothing():
    empty = np.zeros((4, 4), np.int8)
    assert score_mask(np.zeros((4, 4), bool), empty) | {} == {
        "present": False, "predicted_empty": True, "dice": None, "iou": None, "hd95": None, "dice_empty_as_one": 1.0
    }
    assert score_mask(_mask((4, 4), (2, 2)), empty)["dice_empty_as_one"] == 0.0
    present = np.zeros((4, 4), np.int8)
    present[0, 0] = 1
    nothing = score_mask(np.zeros((4, 4), bool), present)
    assert nothing["dice"] == 0.0 and nothing["hd95"] is None and nothing["dice_empty_as_one"] == 0.0


def test_summary_separates_present_from_empty_images():
    rows = pd.DataFrame({
        "patient_id": ["a", "a", "b", "c"],
        "structure": ["x"] * 4,
        "present": [True, True, False, False],
        "predicted_empty": [False, True, True, False],
        "dice": [0.8, 0.0, None, None],
        "iou": [0.5, 0.0, None, None],
        "hd95": [2.0, None, None, None],
        "dice_empty_as_one": [0.8, 0.0, 1.0, 0.0],
    })
    summary = summarize(rows, n_bootstrap=0)["x"]
    assert summary["dice"] == pytest.approx(0.4)
    assert summary["hd95"] == pytest.approx(2.0)
    assert (summary["n_present"], summary["n_empty"], summary["n_missed"]) == (2, 2, 1)
    assert summary["share_empty_predicted_empty"] == pytest.approx(0.5)
    assert summary["dice_empty_as_one"] == pytest.approx(1.8 / 4)


def test_bootstrap_interval_brackets_the_mean_and_resamples_patients():
    rng = np.random.default_rng(0)
    rows = pd.DataFrame({
        "patient_id": [f"p{i // 2}" for i in range(40)], "structure": "x", "present": True,
        "predicted_empty": False, "dice": rng.uniform(0.5, 1.0, 40), "iou": 0.5, "hd95": 1.0,
        "dice_empty_as_one": 0.5,
    })
    summary = summarize(rows, n_bootstrap=200)["x"]
    low, high = summary["dice_ci"]
    assert low < summary["dice"] < high and high - low < 0.2
