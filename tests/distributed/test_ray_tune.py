"""``retune tune`` on a real local Ray instance: Optuna + ASHA on phantoms, validation only, a config train takes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from retune.cli import app
from retune.config import TrainConfig, load_yaml_config
from retune.data.phantoms import write_phantom_dataset
from retune.data.splits import patient_split
from retune.experiments import prepare

runner = CliRunner()


@pytest.mark.slow
def test_tune_finds_a_train_config_without_touching_the_test_split(ray_local, tmp_path, monkeypatch):
    """Test-split embeddings are NaN: a trial that read one would score NaN, so a finite best proves none did."""
    csv_path = write_phantom_dataset(tmp_path / "phantoms", n=60, seed=1)
    spec = {
        "store": str(tmp_path / "store"),
        "data": {"csv": str(csv_path)},
        "n_bootstrap": 10,
        "trials": 3,
        "grace_epochs": 3,
        "retune": {"optim": {"min_epochs": 3, "patience": 5}},
        "search": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "shared_dim": [16, 32], "epochs": [6, 12]},
    }
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(spec))
    real_embed_and_load = prepare.embed_and_load

    def poisoned(table, backbone, store, show_progress=False):
        embedded = real_embed_and_load(table, backbone, store, show_progress)
        test_rows = patient_split(embedded.table.patients, (0.7, 0.1, 0.2), 0)["test"]
        embedded.images[test_rows] = np.nan
        return embedded

    monkeypatch.setattr(prepare, "embed_and_load", poisoned)
    result = runner.invoke(app, ["tune", str(config), "--out", str(tmp_path / "tuned")])
    assert result.exit_code == 0, result.output
    assert "TensorBoard" not in result.output and "Search algorithm" not in result.output  # Tune's own banners
    summary = json.loads((tmp_path / "tuned" / "search.json").read_text())
    assert summary["split"] == "validation" and summary["trials"] == 3 and summary["failed_trials"] == 0
    assert math.isfinite(summary["best_val_mean_auroc"]) and summary["n_test_rows_unseen"] > 0
    best = load_yaml_config(tmp_path / "tuned" / "best.yaml", TrainConfig)
    assert best.retune.adaptor.shared_dim == summary["best_params"]["shared_dim"] in (16, 32)
    assert best.retune.optim.lr == summary["best_params"]["lr"]
    assert (tmp_path / "tuned" / "trials.csv").read_text().count("\n") == 4  # header + one row per trial


def test_search_ranges_are_validated_naming_the_field(tmp_path):
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump({"search": {"lr": {"low": 0.1, "high": 0.01}}}))
    result = runner.invoke(app, ["tune", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "search.lr" in result.output
