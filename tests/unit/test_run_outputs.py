"""A trained run on phantoms, read the way users read it: leakage guard, predict output, API, run card, compare, MLflow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from retune.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory) -> dict[str, Path]:
    """One `retune train` run on 60 phantoms (few epochs, few bootstrap replicates), shared by the tests below."""
    from retune.data.phantoms import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantom-run")
    csv = write_phantom_dataset(root / "phantoms", n=60, seed=3)
    config = root / "train.yaml"
    config.write_text("n_bootstrap: 50\nbaselines: [linear_probe]\n")
    out = root / "run"
    result = runner.invoke(app, ["train", "--data", str(csv), "--out", str(out), "--store", str(root / "store"), "--config", str(config),
                                 "--epochs", "5", "--lr", "0.001", "--json"])
    assert result.exit_code == 0, result.output
    return {"root": root, "csv": csv, "run": out, "store": root / "store"}


def test_train_epochs_and_lr_overrides_are_recorded(phantom_run):
    optim = json.loads((phantom_run["run"] / "config.json").read_text())["train_config"]["retune"]["optim"]
    assert optim["epochs"] == 5 and optim["lr"] == 0.001


def test_evaluate_counts_training_images_by_content_and_can_exclude_them(phantom_run, tmp_path):
    """Evaluating the whole training CSV overlaps the train+val images; copies under new names still count."""
    run, csv = phantom_run["run"], phantom_run["csv"]
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    copies = tmp_path / "copies"
    copies.mkdir()
    for index, path in enumerate(frame["path"]):
        shutil.copy(csv.parent / path, copies / f"renamed_{index}.png")
    frame["path"] = [str(copies / f"renamed_{index}.png") for index in range(len(frame))]
    renamed = tmp_path / "renamed.csv"
    frame.to_csv(renamed, index=False)

    result = runner.invoke(app, ["evaluate", "--run", str(run), "--data", str(renamed), "--n-bootstrap", "20", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    sizes = json.loads((run / "training_digests.json").read_text())
    overlap = metrics["overlap"]
    assert overlap["checked"] and overlap["n_images"] == len(sizes["digests"]) and overlap["of"] == len(frame)
    assert not overlap["excluded"] and "LEAKAGE" in result.stderr

    excluded = runner.invoke(app, ["evaluate", "--run", str(run), "--data", str(renamed), "--n-bootstrap", "20", "--json", "--exclude-overlap"])
    assert excluded.exit_code == 0, excluded.output
    kept = json.loads(excluded.stdout)
    assert kept["overlap"]["excluded"] and kept["n_images"] == len(frame) - overlap["n_images"]


def test_training_digests_hold_no_paths(phantom_run):
    text = (phantom_run["run"] / "training_digests.json").read_text()
    assert "phantom_" not in text and ".png" not in text
