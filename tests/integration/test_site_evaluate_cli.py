"""`retune evaluate` of a tiny NIH run on real Kermany (Guangzhou) images that label two of its fifteen classes."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from retune.cli import app

pytestmark = pytest.mark.integration
runner = CliRunner()


def test_an_nih_run_is_scored_on_the_classes_a_second_site_labels(nih_head_csv, shared_data, tmp_path):
    kermany = shared_data / "kermany-pneumonia"
    if not (kermany / "labels.csv").exists():
        pytest.skip(f"{kermany} not found")
    nih = nih_head_csv(120, tmp_path / "nih.csv")
    (tmp_path / "train.yaml").write_text("baselines: []\nn_bootstrap: 10\nmin_positives: 1\n")
    trained = runner.invoke(app, [
        "train", "--data", str(nih), "--out", str(tmp_path / "run"), "--store", str(tmp_path / "store"),
        "--config", str(tmp_path / "train.yaml"), "--epochs", "2", "--allow-outside-root", "--json",
    ])
    assert trained.exit_code == 0, trained.output
    frame = pd.read_csv(kermany / "labels.csv", dtype=str, keep_default_na=False)
    frame = pd.concat([frame[frame["label"] == "NORMAL"].head(15), frame[frame["label"] == "PNEUMONIA"].head(15)])
    frame["path"] = [str(kermany / path) for path in frame["path"]]
    subset = tmp_path / "kermany.csv"
    frame.to_csv(subset, index=False)

    command = ["evaluate", "--run", str(tmp_path / "run"), "--data", str(subset), "--allow-outside-root",
               "--n-bootstrap", "20"]
    shown = runner.invoke(app, command, env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "Pneumonia" in shown.output and "No_Finding" in shown.output and "Atelectasis" in shown.output
    assert "does not label 13 learned class(es)" in shown.output and "DATA-SITE SHIFT" in shown.output
    result = json.loads(runner.invoke(app, [*command, "--json"]).stdout)
    assert result["classes"] == ["Pneumonia", "No_Finding"]
    assert len(result["unlabelled_classes"]) == 13 and result["unlearned_classes"] == []
    pneumonia = result["per_class"]["Pneumonia"]
    assert (pneumonia["n_pos"], pneumonia["n_neg"]) == (15, 15) and len(pneumonia["auroc_ci"]) == 2
    assert result["site_shift"]["scored"]["sizes"] == {"224x224": 30}
