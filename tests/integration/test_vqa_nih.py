"""`retune vqa` end to end on real NIH ChestX-ray14 rows: build, train with LoRA on the text tower, evaluate with the
baselines, ask about a real image (120 images, 2 epochs, few bootstrap replicates)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from retune.cli import app

pytestmark = pytest.mark.integration

ENV = {"COLUMNS": "1000"}


def invoke(*args):
    result = CliRunner().invoke(app, [str(arg) for arg in args], env=ENV)
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result


def test_build_train_evaluate_ask_on_nih(nih_head_csv, tmp_path):
    csv = nih_head_csv(120, tmp_path / "labels.csv")
    qa = tmp_path / "qa.parquet"
    invoke("vqa", "build", "--data", csv, "--out", qa, "--allow-outside-root", "--held-out-finding", "Edema")
    frame = pd.read_parquet(qa)
    assert set(frame["split"]) == {"train", "val", "test"} and frame["unseen_finding"].any()
    run = tmp_path / "run"
    invoke("vqa", "train", "--questions", qa, "--peft", "lora", "--store", tmp_path / "store", "--out", run,
           "--epochs", "2", "--quiet")
    result = invoke("vqa", "evaluate", "--run", run, "--questions", qa, "--n-bootstrap", "20")
    for label in ("this run", "classifier as answerer", "majority", "random", "unseen finding"):
        assert label in result.stdout
    scores = json.loads(invoke("vqa", "evaluate", "--run", run, "--questions", qa, "--n-bootstrap", "0",
                               "--json").stdout)["scores"]
    assert scores["vqa"]["n"]["accuracy"] == int((frame["split"] == "test").sum())
    answer = invoke("vqa", "ask", "--run", run, frame["image_path"].iloc[0], "Is there an effusion?")
    assert answer.stdout.split()[0] in ("yes", "no")
