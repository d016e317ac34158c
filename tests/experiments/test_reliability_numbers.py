"""Numbers that say what they are: the classes a mean covers, the paired difference over the same classes, decision
thresholds chosen on validation and stored with the run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retune.evaluation.paired import paired_auroc_difference


def test_run_card_and_report_label_the_mean_with_the_classes_it_covers(strict_run):
    metrics = json.loads((strict_run["run"] / "metrics.json").read_text())
    assert metrics["too_few_positives"], "the phantom split should leave a class out of the mean"
    card = (strict_run["run"] / "RUN_CARD.md").read_text()
    page = (strict_run["run"] / "report.html").read_text().replace("&gt;", ">")
    for text in (card, page):  # never "mean (N defined classes)" for a mean over fewer
        assert f"of {len(metrics['classes'])} classes with >= 3 test positives)" in text
    from retune.report.text import mean_label

    expected = mean_label(metrics["n_classes_in_mean"], len(metrics["classes"]), 3)
    assert expected in card and expected in page


def test_paired_difference_averages_only_classes_with_enough_positives():
    rng = np.random.default_rng(0)
    labels = np.zeros((60, 2))
    labels[:30, 0] = 1
    labels[0, 1] = 1  # one positive: defined, but below min_positives
    scores_a, scores_b = rng.random((60, 2)), rng.random((60, 2))
    scores_a[0, 1], scores_b[0, 1] = 1.0, 0.0  # the rare class alone would carry a large A - B
    result = paired_auroc_difference(scores_a, scores_b, labels, ["common", "rare"], n_bootstrap=50, min_positives=10)
    common = result["per_class"]["common"]["difference"]
    assert result["classes_in_mean"] == ["common"] and result["too_few_positives"] == ["rare"]
    assert result["difference"] == pytest.approx(common)
    assert result["per_class"]["rare"]["difference"] is not None  # still listed per class


def test_paired_comparison_of_runs_applies_min_positives(strict_run):
    from retune.experiments.inference import paired_comparison

    run = strict_run["run"]
    result = paired_comparison(run, run, strict_run["csv"], n_bootstrap=10, min_positives=3)
    metrics = json.loads((run / "metrics.json").read_text())
    assert result["min_positives"] == 3 and set(result["too_few_positives"]) >= set(metrics["too_few_positives"])
    assert result["mean_auroc_a"] == pytest.approx(metrics["mean_auroc"], abs=1e-6)  # the run's own headline


def test_a_trained_run_stores_validation_thresholds_with_how_they_were_chosen(strict_run):
    facts = json.loads((strict_run["run"] / "config.json").read_text())
    assert "Youden" in facts["threshold_rule"] and "validation" in facts["threshold_rule"]
    assert facts["thresholds"] and set(facts["thresholds"]) <= set(facts["classes"])
    metrics = json.loads((strict_run["run"] / "metrics.json").read_text())
    for name, threshold in facts["thresholds"].items():
        assert metrics["operating_points"][name]["threshold"] == pytest.approx(threshold)


def test_compare_cli_takes_min_positives_and_labels_the_classes_of_its_means(strict_run):
    from typer.testing import CliRunner

    from retune.cli import app

    run, csv = str(strict_run["run"]), str(strict_run["csv"])
    metrics = json.loads((strict_run["run"] / "metrics.json").read_text())
    side_by_side = CliRunner().invoke(app, ["compare", run, run], env={"COLUMNS": "250"})
    assert f"{metrics['n_classes_in_mean']} of {len(metrics['classes'])} classes with >= 3" in side_by_side.stdout
    options = ["compare", run, run, "--data", csv, "--n-bootstrap", "10", "--min-positives", "3"]
    printed = CliRunner().invoke(app, [*options, "--json"])
    assert printed.exit_code == 0, printed.output
    result = json.loads(printed.stdout)
    assert result["n_classes_in_mean"] == metrics["n_classes_in_mean"]
    table = CliRunner().invoke(app, options, env={"COLUMNS": "200"})
    from retune.report.text import mean_label

    assert mean_label(metrics["n_classes_in_mean"], len(metrics["classes"]), 3) in table.stdout


def test_predict_marks_decisions_with_the_runs_thresholds(strict_run):
    from typer.testing import CliRunner

    from retune.cli import app

    facts = json.loads((strict_run["run"] / "config.json").read_text())
    images = [str(p) for p in sorted((strict_run["csv"].parent / "images").glob("*.png"))[:3]]
    printed = CliRunner().invoke(app, ["predict", "--run", str(strict_run["run"]), *images, "--json"])
    assert printed.exit_code == 0, printed.output
    for record in json.loads(printed.stdout):
        for name, probability in record["probabilities"].items():
            expected = probability >= facts["thresholds"][name] if name in facts["thresholds"] else None
            assert record["decisions"][name] == expected
    table = CliRunner().invoke(app, ["predict", "--run", str(strict_run["run"]), *images], env={"COLUMNS": "200"})
    assert "+ = at or above the run's decision threshold (Youden" in " ".join(table.stdout.split())
