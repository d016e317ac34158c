"""VQA scores and answerers on hand-made question tables whose right values are worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from retune.evaluation.vqa import (
    classifier_answers,
    classifier_thresholds,
    majority_answers,
    random_answers,
    score_answers,
)


def question(pid, finding, answer, role="", pair="", kind="yes_no", unseen_phrasing=False, unseen_finding=False,
             candidates="yes|no", split="test", image=None):
    return {"question_id": f"q{pid}{finding}{role}", "image_path": image or f"img{pid}.png", "patient_id": f"p{pid}",
            "split": split, "type": kind, "finding": finding, "phrasing": 0, "question": f"{finding}?",
            "answer": answer, "candidates": candidates, "pair_id": pair, "role": role,
            "unseen_phrasing": unseen_phrasing, "unseen_finding": unseen_finding, "source": "labels"}


@pytest.fixture
def frame() -> pd.DataFrame:
    rows = [
        question(1, "Effusion", "yes", "yes", "a"),
        question(1, "Mass", "no", "adversarial_no", "a"),
        question(2, "Effusion", "yes", "yes", "b"),
        question(2, "Mass", "no", "adversarial_no", "b"),
        question(3, "Effusion", "no", "no"),
        question(3, "Mass", "yes", "yes", unseen_phrasing=True),
        question(4, "Hernia", "yes", "yes", unseen_finding=True),
        question(4, "Effusion|Mass|Hernia", "none", "choice", kind="choice", candidates="effusion|mass|hernia|none",
                 unseen_finding=True),
    ]
    return pd.DataFrame(rows)


def test_scores_by_hand(frame):
    predicted = ["yes", "no", "yes", "yes", "no", "yes", "no", "none"]
    result = score_answers(frame, predicted, n_bootstrap=0, min_positives=1)
    assert result["accuracy"] == pytest.approx(6 / 8)
    assert result["accuracy_yes_no"] == pytest.approx(5 / 7)
    assert result["accuracy_choice"] == 1.0
    assert result["accuracy_seen"] == pytest.approx(4 / 5)  # rows 0-4
    assert result["accuracy_unseen_phrasing"] == 1.0
    assert result["accuracy_unseen_finding"] == pytest.approx(1 / 2)
    assert result["paired_accuracy"] == pytest.approx(1 / 2)  # pair a right, pair b's "no" wrong
    # Effusion: yes 2/2, no 1/1 -> 1.0; Mass: yes 1/1, no 1/2 -> 0.75; Hernia has no "no": undefined
    assert result["per_finding"]["Effusion"]["balanced_accuracy"] == 1.0
    assert result["per_finding"]["Mass"]["balanced_accuracy"] == 0.75
    assert result["per_finding"]["Hernia"]["balanced_accuracy"] is None
    assert result["balanced_accuracy_per_finding_mean"] == pytest.approx(0.875)
    assert result["n"]["pairs"] == 2 and result["n_patients"] == 4


def test_min_positives_leaves_findings_out_of_the_mean(frame):
    predicted = ["yes", "no", "yes", "yes", "no", "yes", "no", "none"]
    result = score_answers(frame, predicted, n_bootstrap=0, min_positives=2)
    assert result["balanced_accuracy_per_finding_mean"] == 1.0  # only Effusion has 2 "yes" questions


def test_unanswered_questions_are_left_out_not_counted_wrong(frame):
    predicted = ["yes", "no", "yes", "no", "no", "yes", None, None]
    result = score_answers(frame, predicted, n_bootstrap=0)
    assert result["accuracy"] == 1.0
    assert result["accuracy_unseen_finding"] is None
    assert result["n"]["accuracy"] == 6


def test_bootstrap_ci_brackets_the_estimate_and_resamples_patients(frame):
    predicted = ["yes", "yes", "yes", "no", "yes", "no", "no", "none"]
    result = score_answers(frame, predicted, n_bootstrap=200, seed=1)
    low, high = result["accuracy_ci"]
    assert low <= result["accuracy"] <= high and low < high
    # a perfect answerer has a degenerate interval
    perfect = score_answers(frame, list(frame["answer"]), n_bootstrap=50)
    assert perfect["accuracy_ci"] == [1.0, 1.0]


def test_random_and_majority_answerers(frame):
    answers = random_answers(frame, seed=0)
    assert all(a in c.split("|") for a, c in zip(answers, frame["candidates"]))
    assert answers == random_answers(frame, seed=0)
    train = pd.DataFrame([question(9, "Effusion", "no", split="train"), question(9, "Mass", "no", split="train"),
                          question(8, "Mass", "yes", split="train")])
    assert majority_answers(train, frame) == ["no"] * 7 + ["none"]


def test_classifier_answers_above_its_validation_threshold(frame):
    val_scores = np.array([[0.9, 0.2], [0.7, 0.6], [0.3, 0.8], [0.1, 0.1]])
    val_labels = np.array([[1, 0], [1, 0], [0, 1], [0, 0]], dtype=float)
    thresholds = classifier_thresholds(val_scores, val_labels, ["Effusion", "Mass"])
    assert thresholds == {"Effusion": 0.7, "Mass": 0.8}
    probabilities = {("img1.png", "Effusion"): 0.75, ("img1.png", "Mass"): 0.5, ("img2.png", "Effusion"): 0.6,
                     ("img2.png", "Mass"): 0.9, ("img3.png", "Effusion"): 0.7, ("img3.png", "Mass"): 0.1}
    answers = classifier_answers(frame, lambda image, finding: probabilities[(image, finding)], thresholds)
    # Hernia is not a class of the classifier: unanswered
    assert answers == ["yes", "no", "no", "yes", "yes", "no", None, None]


def test_classifier_picks_the_option_furthest_above_threshold():
    row = question(1, "Effusion|Mass|Nodule", "mass", kind="choice", candidates="an effusion|mass|nodule|none")
    frame = pd.DataFrame([row, {**row, "image_path": "other.png"}])
    probabilities = {"img1.png": {"Effusion": 0.6, "Mass": 0.9, "Nodule": 0.2},
                     "other.png": {"Effusion": 0.1, "Mass": 0.1, "Nodule": 0.1}}
    thresholds = {"Effusion": 0.5, "Mass": 0.5, "Nodule": 0.5}
    answers = classifier_answers(frame, lambda image, finding: probabilities[image][finding], thresholds)
    assert answers == ["mass", "none"]
