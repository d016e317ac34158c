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


class _Scorer:
    """Everything ``score_answers`` reports for one set of answers, computed on any multiset of rows (a patient
    resample) from arrays prepared once: subset masks, each pair's both-right value on its "yes" row, finding codes."""

    def __init__(self, frame: pd.DataFrame, correct: np.ndarray, answered: np.ndarray, min_positives: int) -> None:
        self.correct, self.answered, self.min_positives = correct, answered, min_positives
        self.masks = {name: mask & answered for name, mask in _subsets(frame).items()}
        pair = frame["pair_id"].to_numpy()
        seen = ~frame["unseen_phrasing"].to_numpy(bool) & ~frame["unseen_finding"].to_numpy(bool)
        groups = pd.DataFrame({"pair": pair, "right": correct, "answered": answered, "seen": seen})[pair != ""]
        by_pair = groups.groupby("pair").agg(right=("right", "min"), answered=("answered", "all"),
                                             seen=("seen", "all"), size=("right", "size"))
        by_pair = by_pair[(by_pair["size"] == 2) & by_pair["answered"]]
        is_yes = (frame["role"] == "yes").to_numpy() & np.isin(pair, by_pair.index)
        self.pair_right = np.where(is_yes, pd.Series(pair).map(by_pair["right"]).fillna(0).to_numpy(), 0.0)
        self.pair_rows = is_yes
        self.pair_seen = is_yes & pd.Series(pair).map(by_pair["seen"]).fillna(False).to_numpy(bool)
        yes_no = (frame["type"] == YES_NO).to_numpy() & answered
        self.findings, codes = np.unique(frame["finding"].to_numpy()[yes_no], return_inverse=True)
        self.finding_code = np.full(len(frame), -1)
        self.finding_code[yes_no] = codes
        self.is_yes_answer = (frame["answer"] == YES).to_numpy()

    def per_finding(self, rows: np.ndarray) -> dict[str, dict]:
        """Balanced accuracy (mean of the accuracies on "yes" and on "no" questions) per finding, with counts."""
        rows = rows[self.finding_code[rows] >= 0]
        counts, right = {}, {}
        for answer, chosen in ((YES, rows[self.is_yes_answer[rows]]), (NO, rows[~self.is_yes_answer[rows]])):
            counts[answer] = np.bincount(self.finding_code[chosen], minlength=len(self.findings))
            right[answer] = np.bincount(self.finding_code[chosen], self.correct[chosen], minlength=len(self.findings))
        result = {}
        for code, finding in enumerate(self.findings):
            n_yes, n_no = int(counts[YES][code]), int(counts[NO][code])
            value = (right[YES][code] / n_yes + right[NO][code] / n_no) / 2 if n_yes and n_no else None
            result[str(finding)] = {"balanced_accuracy": None if value is None else float(value), "n_yes": n_yes,
                                    "n_no": n_no}
        return result

    def scores(self, rows: np.ndarray) -> dict[str, float | None]:
        result: dict[str, float | None] = {}
        for name, mask in self.masks.items():
            chosen = rows[mask[rows]]
            result[name] = float(self.correct[chosen].mean()) if len(chosen) else None
        for name, mask in (("paired_accuracy", self.pair_rows), ("paired_accuracy_seen", self.pair_seen)):
            chosen = rows[mask[rows]]
            result[name] = float(self.pair_right[chosen].mean()) if len(chosen) else None
        counted = [v["balanced_accuracy"] for v in self.per_finding(rows).values()
                   if v["balanced_accuracy"] is not None and v["n_yes"] >= self.min_positives]
        result["balanced_accuracy_per_finding_mean"] = float(np.mean(counted)) if counted else None
        return result


def score_answers(frame: pd.DataFrame, predicted: list[str | None], n_bootstrap: int = 1000, seed: int = 0,
                  min_positives: int = DEFAULT_MIN_POSITIVES) -> dict:
    """Every score of ``predicted`` answers (None = not answered: left out) on the questions of ``frame``, with
    percentile CIs from resampling patients; counts per subset say what each score covers."""
    frame = frame.reset_index(drop=True)
    answers = frame["answer"].to_numpy()
    answered = np.array([answer is not None for answer in predicted], dtype=bool)
    correct = np.array([p == a for p, a in zip(predicted, answers)], dtype=float)
    rows = np.arange(len(frame))
    scorer = _Scorer(frame, correct, answered, min_positives)
    point = scorer.scores(rows)
    codes = np.unique(frame["patient_id"].astype(str).to_numpy(), return_inverse=True)[1]
    replicates: dict[str, list[float]] = {name: [] for name in point}
    if n_bootstrap and len(frame):
        for sample in patient_resamples(codes, n_bootstrap, seed):
            for name, value in scorer.scores(sample).items():
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
    result["n"]["pairs"] = int(scorer.pair_rows.sum())
    result["per_finding"] = scorer.per_finding(rows)
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
