"""Closed-ended VQA scores with patient-bootstrap CIs, and the answerers they are compared with.

Scores: accuracy (all closed questions, yes/no, multiple choice), accuracy on seen wording and findings, on unseen
phrasings and on unseen findings, paired accuracy (a "yes" and its adversarial "no" both right; ProbMed) and
per-finding balanced accuracy (mean over findings with at least ``min_positives`` "yes" questions). Baselines: a
seeded random answerer, the majority answer of the training questions, and a classifier answering "yes" above its
validation-chosen threshold.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from retune.data.questions import CANDIDATE_SEPARATOR, CHOICE, NO, NONE, YES, YES_NO
from retune.evaluation.metrics import DEFAULT_MIN_POSITIVES, patient_resamples
from retune.evaluation.operating_point import youden_threshold

CI_LEVEL = 0.95


def _subsets(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    closed = frame["type"].isin([YES_NO, CHOICE]).to_numpy()
    unseen_phrasing = frame["unseen_phrasing"].to_numpy(bool)
    unseen_finding = frame["unseen_finding"].to_numpy(bool)
    return {
        "accuracy": np.ones(len(frame), bool),
        "accuracy_closed": closed,
        "accuracy_yes_no": (frame["type"] == YES_NO).to_numpy(),
        "accuracy_choice": (frame["type"] == CHOICE).to_numpy(),
        "accuracy_seen": closed & ~unseen_phrasing & ~unseen_finding,
        "accuracy_unseen_phrasing": closed & unseen_phrasing & ~unseen_finding,
        "accuracy_unseen_finding": closed & unseen_finding,
    }


def _paired(frame: pd.DataFrame, correct: np.ndarray, rows: np.ndarray, seen_only: bool) -> float | None:
    """Share of (yes, adversarial no) pairs in ``rows`` with both answers right."""
    part = frame.iloc[rows]
    keep = (part["pair_id"] != "").to_numpy()
    if seen_only:
        keep = keep & ~part["unseen_finding"].to_numpy(bool) & ~part["unseen_phrasing"].to_numpy(bool)
    if not keep.any():
        return None
    both = pd.Series(correct[rows][keep]).groupby(part["pair_id"].to_numpy()[keep]).agg(["min", "size"])
    both = both[both["size"] == 2]
    return float(both["min"].mean()) if len(both) else None


def _balanced(frame: pd.DataFrame, correct: np.ndarray, rows: np.ndarray, min_positives: int) -> dict:
    """Balanced accuracy per finding (mean of accuracy on "yes" and on "no" questions) and their mean."""
    part = frame.iloc[rows]
    yes_no = (part["type"] == YES_NO).to_numpy()
    per_finding, counted = {}, []
    for finding, where in part[yes_no].groupby("finding").indices.items():
        answers = part[yes_no]["answer"].to_numpy()[where]
        right = correct[rows][yes_no][where]
        n_yes = int(np.sum(answers == YES))
        if n_yes == 0 or n_yes == len(answers):
            per_finding[finding] = {"balanced_accuracy": None, "n_yes": n_yes, "n_no": len(answers) - n_yes}
            continue
        value = float((right[answers == YES].mean() + right[answers == NO].mean()) / 2)
        per_finding[finding] = {"balanced_accuracy": value, "n_yes": n_yes, "n_no": len(answers) - n_yes}
        if n_yes >= min_positives:
            counted.append(value)
    return {"per_finding": per_finding, "mean": float(np.mean(counted)) if counted else None,
            "n_findings_in_mean": len(counted)}


def _point_scores(frame: pd.DataFrame, correct: np.ndarray, answered: np.ndarray, rows: np.ndarray,
                  min_positives: int) -> dict[str, float | None]:
    scores: dict[str, float | None] = {}
    for name, mask in _subsets(frame).items():
        chosen = rows[mask[rows] & answered[rows]]
        scores[name] = float(correct[chosen].mean()) if len(chosen) else None
    usable = rows[answered[rows]]
    scores["paired_accuracy"] = _paired(frame, correct, usable, seen_only=False)
    scores["paired_accuracy_seen"] = _paired(frame, correct, usable, seen_only=True)
    scores["balanced_accuracy_per_finding_mean"] = _balanced(frame, correct, usable, min_positives)["mean"]
    return scores


def score_answers(frame: pd.DataFrame, predicted: list[str | None], n_bootstrap: int = 1000, seed: int = 0,
                  min_positives: int = DEFAULT_MIN_POSITIVES) -> dict:
    """Every score of ``predicted`` answers (None = not answered: left out) on the questions of ``frame``, with
    percentile CIs from resampling patients; counts per subset say what each score covers."""
    frame = frame.reset_index(drop=True)
    answers = frame["answer"].to_numpy()
    answered = np.array([answer is not None for answer in predicted], dtype=bool)
    correct = np.array([p == a for p, a in zip(predicted, answers)], dtype=float)
    rows = np.arange(len(frame))
    point = _point_scores(frame, correct, answered, rows, min_positives)
    codes = np.unique(frame["patient_id"].astype(str).to_numpy(), return_inverse=True)[1]
    replicates: dict[str, list[float]] = {name: [] for name in point}
    if n_bootstrap and len(frame):
        for sample in patient_resamples(codes, n_bootstrap, seed):
            for name, value in _point_scores(frame, correct, answered, np.sort(sample), min_positives).items():
                if value is not None:
                    replicates[name].append(value)
    result: dict = {}
    tail = (1 - CI_LEVEL) / 2
    for name, value in point.items():
        usable = replicates[name]
        enough = n_bootstrap and len(usable) >= n_bootstrap / 2 and value is not None
        result[name] = value
        result[f"{name}_ci"] = [float(q) for q in np.quantile(usable, [tail, 1 - tail])] if enough else None
    result["n"] = {name: int((mask & answered).sum()) for name, mask in _subsets(frame).items()}
    paired = answered & (frame["role"] == "yes").to_numpy() & (frame["pair_id"] != "").to_numpy()
    result["n"]["pairs"] = int(frame.loc[paired, "pair_id"].nunique())
    result["per_finding"] = _balanced(frame, correct, rows[answered], min_positives)["per_finding"]
    result["n_patients"] = int(frame["patient_id"].nunique())
    return result


# ---------------------------------------------------------------- baselines


def candidates_of(frame: pd.DataFrame) -> list[list[str]]:
    return [str(value).split(CANDIDATE_SEPARATOR) for value in frame["candidates"]]


def random_answers(frame: pd.DataFrame, seed: int = 0) -> list[str]:
    """A seeded uniform choice among each question's candidates."""
    rng = np.random.default_rng(seed)
    return [str(rng.choice(options)) for options in candidates_of(frame)]


def majority_answers(train: pd.DataFrame, frame: pd.DataFrame) -> list[str]:
    """Per question type, the answer most often right in the training questions (by candidate position for multiple
    choice, whose options change: "none" when it is the commonest)."""
    common: dict[str, str] = {}
    for kind, group in train.groupby("type"):
        counts = group["answer"].value_counts()
        common[kind] = str(counts.index[0]) if len(counts) else NO
    return [common.get(kind, options[-1]) if common.get(kind) in options else options[-1]
            for kind, options in zip(frame["type"], candidates_of(frame))]


def classifier_thresholds(val_scores: np.ndarray, val_labels: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Per class, the validation threshold maximising Youden's J (classes without both labels on validation: 0.5)."""
    thresholds = {}
    for column, name in enumerate(classes):
        chosen = youden_threshold(val_scores[:, column], val_labels[:, column])
        thresholds[name] = 0.5 if chosen is None else chosen
    return thresholds


def classifier_answers(frame: pd.DataFrame, probability: Callable[[str, str], float | None],
                       thresholds: dict[str, float]) -> list[str | None]:
    """A classifier as answerer: "yes" when ``probability(image, finding)`` reaches the finding's threshold; for
    multiple choice the option furthest above its threshold, or "none". Findings it was not trained on: None."""
    answers: list[str | None] = []
    for (kind, finding, image), options in zip(frame[["type", "finding", "image_path"]].itertuples(index=False),
                                               candidates_of(frame)):
        names = finding.split(CANDIDATE_SEPARATOR) if kind == CHOICE else [finding]
        if kind not in (YES_NO, CHOICE) or any(name not in thresholds for name in names):
            answers.append(None)
            continue
        margins = [probability(image, name) - thresholds[name] for name in names]
        if kind == YES_NO:
            answers.append(YES if margins[0] >= 0 else NO)
        else:
            best = int(np.argmax(margins))
            answers.append(options[best] if margins[best] >= 0 else NONE)
    return answers
