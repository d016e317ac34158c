"""Which classes a partially labelled CSV can score, and per-site breakdowns."""

from __future__ import annotations

import numpy as np
import pytest

from retune.errors import ConfigError
from retune.evaluation import evaluate_scores
from retune.evaluation.coverage import label_coverage, per_site_metrics


def test_coverage_scores_the_shared_classes_and_lists_both_sides():
    coverage = label_coverage(["A", "B", "C"], ["C", "X", "A"], "site.csv")
    assert coverage.scored == ["A", "C"]  # the model's order
    assert coverage.to_dict() == {"unlabelled_classes": ["B"], "unlearned_classes": ["X"]}
    unlabelled, unlearned = coverage.warnings("site.csv")
    assert "not scored: B" in unlabelled and "never learned, not scored: X" in unlearned


def test_a_csv_labelling_none_of_the_classes_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^site.csv: labels none of the model's classes \(A, B\); its labelled "
                                          r"classes: X$"):
        label_coverage(["A", "B"], ["X"], "site.csv")


def test_per_site_metrics_score_each_site_on_its_own_rows():
    """Scores perfect at site a and reversed at site b: pooled AUROC hides it, the breakdown shows it."""
    labels = np.array([[0], [1], [0], [1], [0], [1], [0], [1]], dtype=np.float32)
    scores = np.array([[0.1], [0.9], [0.2], [0.8], [0.9], [0.1], [0.8], [0.2]])
    sites = np.array(["a"] * 4 + ["b"] * 4)
    patients = np.arange(8).astype(str)
    by_site = per_site_metrics(scores, labels, ["A"], patients, sites, n_bootstrap=20, seed=0, min_positives=1)
    assert by_site["a"]["per_class"]["A"]["auroc"] == 1.0 and by_site["b"]["per_class"]["A"]["auroc"] == 0.0
    assert by_site["a"]["n_images"] == 4
    assert evaluate_scores(scores, labels, ["A"], patients, n_bootstrap=0).per_class["A"].auroc == 0.5
    assert per_site_metrics(scores, labels, ["A"], patients, np.array(["a"] * 8), 0, 0, 1) == {}
