"""`retune demo` on phantoms and `retune scenario run/compare` on real NIH images, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from retune.cli import app

runner = CliRunner()


def test_demo_runs_every_method_and_writes_a_self_contained_report(tmp_path):
    """The main job: every method's results.json, report.html with inlined plots, MLflow runs."""
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--n-images", "60", "--n-tasks", "2"])
    assert result.exit_code == 0, result.output
    for method in ("retune", "retune-distill", "linear_probe", "naive", "lwf", "ewc", "joint"):
        payload = json.loads((out / method / "results.json").read_text())
        assert payload["method"] == method
        assert len(payload["auroc_matrix"]) == 2
        assert payload["final_mean_auroc"] is None or 0.0 <= payload["final_mean_auroc"] <= 1.0
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "<img" in page
    assert "general-domain" in page
    assert any((out / "mlruns").rglob("meta.yaml"))
    assert "final mean AUROC" in result.output


@pytest.fixture(scope="module")
def nih_subset(nih_dir: Path, tmp_path_factory) -> Path:
    """The first 300 NIH rows with absolute image paths."""
    frame = pd.read_csv(nih_dir / "labels.csv").head(300)
    frame["path"] = [str(nih_dir / p) for p in frame["path"]]
    target = tmp_path_factory.mktemp("nih") / "labels.csv"
    frame.to_csv(target, index=False)
    return target


def _scenario(tmp_path: Path, csv: Path, **overrides) -> Path:
    spec = {
        "name": "nih-small",
        "store": str(tmp_path / "store"),
        "data": {"csv": str(csv), "allow_outside_root": True},
        "generate": {
            "kind": "class",
            "n_tasks": 3,
            "classes": ["Atelectasis", "Effusion", "Infiltration", "Pneumonia", "Edema", "No_Finding"],
        },
        "methods": ["retune", "retune-distill", "retune-prompt", "retune-residual", "linear_probe", "ranpac", "naive"],
        "n_bootstrap": 100,
        "retune": {"optim": {"epochs": 40}},
        **overrides,
    }
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_scenario_run_and_compare_on_real_nih_images(tmp_path, nih_subset):
    """A class-incremental scenario on real images: results per method, report, resumable, comparable."""
    config = _scenario(tmp_path, nih_subset)
    out = tmp_path / "out"
    first = runner.invoke(app, ["scenario", "run", str(config), "--out", str(out)])
    assert first.exit_code == 0, first.output
    result = json.loads((out / "retune" / "results.json").read_text())
    assert result["scenario"] == "nih-small" and len(result["tasks"]) == 3
    assert (
        result["final_mean_auroc_ci"] is None
        or result["final_mean_auroc_ci"][0] <= result["final_mean_auroc"] <= result["final_mean_auroc_ci"][1]
    )
    for cannot_forget in ("linear_probe", "retune-residual"):
        assert json.loads((out / cannot_forget / "results.json").read_text())["forgetting"] == pytest.approx(
            0.0, abs=1e-9
        )
    assert (out / "plots" / "mean_auroc_per_task.png").exists()
    assert (out / "scenario.json").exists()

    again = runner.invoke(app, ["scenario", "run", str(config), "--out", str(out)])
    assert again.exit_code == 0
    assert "task 1/3 done" not in again.output  # every task resumed from disk

    compared = runner.invoke(app, ["scenario", "compare", str(out)])
    assert compared.exit_code == 0
    assert "retune-distill" in compared.output and "naive" in compared.output
    assert "classes with >=" in compared.output  # the count of classes in the means is shown beside them


def test_scenario_evaluate_scores_final_models_on_another_csv(tmp_path, nih_subset, nih_dir):
    """`scenario evaluate`: every method's final model on rows the scenario never read, with CIs; overlap is loud."""
    config = _scenario(tmp_path, nih_subset, methods=["ranpac", "simplecil"], orders=[0, 1])
    out = tmp_path / "out"
    assert runner.invoke(app, ["scenario", "run", str(config), "--out", str(out)]).exit_code == 0
    frame = pd.read_csv(nih_dir / "labels.csv").iloc[300:420]
    frame["path"] = [str(nih_dir / p) for p in frame["path"]]
    other = tmp_path / "other.csv"
    frame.to_csv(other, index=False)
    options = ["--data", str(other), "--n-bootstrap", "50", "--min-positives", "3"]
    result = runner.invoke(app, ["scenario", "evaluate", str(out), *options])
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "external-other.json").read_text())
    assert payload["n_images"] == 120 and set(payload["methods"]) == {"ranpac", "simplecil"}
    record = payload["methods"]["ranpac"]
    assert len(record["runs"]) == 2 and record["mean_auroc_over_runs"]["n"] == 2
    assert record["mean_auroc_ci"][0] <= record["mean_auroc"] <= record["mean_auroc_ci"][1]
    assert not any("images were in" in warning for warning in payload["warnings"])

    again = runner.invoke(app, ["scenario", "evaluate", str(out), "--data", str(nih_subset)])
    assert again.exit_code == 0
    assert "were in the scenario's training or validation rows" in again.output  # training images: loud


def test_scenario_with_unknown_class_fails_before_training(tmp_path, nih_subset):
    """A task naming an unknown class exits 2 with one line naming the task and class."""
    config = _scenario(
        tmp_path, nih_subset, generate=None, tasks=[{"classes": ["Effusion"]}, {"classes": ["Heartache"]}]
    )
    result = runner.invoke(app, ["scenario", "run", str(config), "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2
    assert "task 2: unknown class 'Heartache'" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "bad" / "retune").exists()
