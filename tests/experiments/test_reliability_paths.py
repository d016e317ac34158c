"""Paths resolve where users expect: run folders survive `cd`, YAML paths resolve against the YAML's folder, failed
starts leave nothing behind, unresolved image paths are explained, and splits can be exported."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from retune.cli import app

runner = CliRunner()


def test_a_run_trained_with_relative_paths_evaluates_its_test_split_from_elsewhere(strict_run, tmp_path, monkeypatch):
    shutil.copytree(strict_run["csv"].parent, tmp_path / "site" / "phantoms")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "site")
    store, config = str(strict_run["store"]), str(strict_run["config"])
    trained = runner.invoke(
        app, ["train", "--data", "phantoms/labels.csv", "--out", "run", "--store", store, "--config", config,
              "--epochs", "1"]
    )
    assert trained.exit_code == 0, trained.output
    facts = json.loads(Path("run/config.json").read_text())
    assert Path(facts["data"]["csv"]).is_absolute() and len(facts["data"]["csv_sha256"]) == 64
    monkeypatch.chdir(tmp_path / "elsewhere")
    evaluated = runner.invoke(
        app, ["evaluate", "--run", "../site/run", "--data", "../site/phantoms/labels.csv", "--n-bootstrap", "5",
              "--min-positives", "1", "--json"]
    )
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads(evaluated.stdout)
    assert metrics["split"] == "test" and metrics["n_images"] == facts["split"]["sizes"]["test"]

    exported = tmp_path / "site" / "phantoms" / "test.csv"
    result = runner.invoke(app, ["split", "export", "--run", "../site/run", "--split", "test", "--out", str(exported)])
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(exported, dtype=str)
    assert len(rows) == metrics["n_images"] and list(rows.columns) == list(pd.read_csv(strict_run["csv"]).columns)
    train_rows = tmp_path / "train.csv"
    options = ["--run", "../site/run", "--split", "train", "--out", str(train_rows)]
    exported_train = runner.invoke(app, ["split", "export", *options])
    assert exported_train.exit_code == 0, exported_train.output
    assert not set(rows["patient_id"]) & set(pd.read_csv(train_rows, dtype=str)["patient_id"])


def test_yaml_paths_resolve_against_its_folder_and_a_failed_start_leaves_nothing(strict_run, tmp_path, monkeypatch):
    configs, elsewhere = tmp_path / "configs", tmp_path / "elsewhere" / "deeper"  # ../phantoms differs from each
    configs.mkdir()
    elsewhere.mkdir(parents=True)
    shutil.copytree(strict_run["csv"].parent, tmp_path / "phantoms")
    settings = (
        f"name: relative\nstore: {os.path.relpath(strict_run['store'], configs)}\n"
        "generate: {kind: class, n_tasks: 2}\nmethods: [naive]\nn_bootstrap: 5\nmin_positives: 1\n"
        "retune: {optim: {epochs: 1, min_epochs: 1}}\n"
    )
    (configs / "good.yaml").write_text("data: {csv: ../phantoms/labels.csv}\n" + settings)
    (configs / "missing.yaml").write_text("data: {csv: ../phantoms/nothing.csv}\n" + settings)
    monkeypatch.chdir(elsewhere)
    failed = runner.invoke(app, ["scenario", "run", "../../configs/missing.yaml", "--out", "failed", "--quiet"])
    assert failed.exit_code == 2 and f"{tmp_path}/phantoms/nothing.csv: file not found" in failed.output
    assert not Path("failed").exists()
    ran = runner.invoke(app, ["scenario", "run", "../../configs/good.yaml", "--out", "done", "--quiet"])
    assert ran.exit_code == 0, ran.output
    result = runner.invoke(app, ["split", "export", "--scenario", "done", "--split", "test", "--out", "test.csv"])
    assert result.exit_code == 0, result.output
    test_rows = json.loads(Path("done/naive/results.json").read_text())["n_test_images"]
    assert len(pd.read_csv("test.csv")) == test_rows


def test_unresolved_image_paths_are_explained_with_the_first_path_and_image_root(
    strict_run, phantom_scenario, tmp_path
):
    shutil.copy(strict_run["csv"], tmp_path / "labels.csv")  # its relative image paths do not exist beside the copy
    for command in (["evaluate", "--run", str(strict_run["run"])], ["scenario", "evaluate", str(phantom_scenario)]):
        result = runner.invoke(app, [*command, "--data", str(tmp_path / "labels.csv")])
        text = " ".join(result.output.split())
        assert result.exit_code == 2 and "image paths exist: the first resolves to" in text, text
        assert str(tmp_path / "images") in text and "--image-root" in text
