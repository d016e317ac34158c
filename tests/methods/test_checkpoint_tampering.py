"""Checkpoints that are wrong are refused in one line (file + problem) by evaluate and predict, never used."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

from retune.cli import app
from retune.methods.checkpoint import CHECKPOINT, CONFIG, file_sha256


@pytest.fixture(scope="module")
def trained(phantom_run) -> tuple[Path, Path]:
    """The session's phantom run (RE-tune + linear probe, default backbone): (run dir, labels.csv)."""
    return phantom_run.run, phantom_run.csv


def tampered(trained, tmp_path, change) -> Path:
    """A copy of the run with ``change(run_dir)`` applied."""
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    change(run)
    return run


def rewrite_tensors(run: Path, edit, keep_hash_valid: bool = True) -> None:
    tensors = load_file(str(run / CHECKPOINT))
    edit(tensors)
    save_file(tensors, str(run / CHECKPOINT))
    if (
        keep_hash_valid
    ):  # an attacker (or an old checkpoint) with a matching or absent hash: the other checks still hold
        facts = json.loads((run / CONFIG).read_text())
        facts["weights_sha256"] = file_sha256(run / CHECKPOINT)
        (run / CONFIG).write_text(json.dumps(facts))


def edit_config(run: Path, edit) -> None:
    facts = json.loads((run / CONFIG).read_text())
    (run / CONFIG).write_text(json.dumps(edit(facts)))


def flip_a_bit(run: Path) -> None:
    data = bytearray((run / CHECKPOINT).read_bytes())
    data[-5] ^= 0x10  # inside the last tensor's bytes
    (run / CHECKPOINT).write_bytes(bytes(data))


def nan_weight(tensors: dict) -> None:
    key = next(k for k in tensors if k.startswith("retune/") and tensors[k].ndim == 2)
    tensors[key] = tensors[key].copy()
    tensors[key][0, 0] = np.nan


def wrong_shape(tensors: dict) -> None:
    key = next(k for k in tensors if k.startswith("retune/") and tensors[k].ndim == 2)
    tensors[key] = np.zeros((tensors[key].shape[0] + 3, tensors[key].shape[1]), dtype=tensors[key].dtype)


def without(key: str):
    return lambda facts: {k: v for k, v in facts.items() if k != key}


CASES = {
    "bit flip": (flip_a_bit, CHECKPOINT, "SHA-256 differs from the one recorded"),
    "NaN weight": (lambda run: rewrite_tensors(run, nan_weight), CHECKPOINT, "holds NaN or infinite values"),
    "wrong shape": (lambda run: rewrite_tensors(run, wrong_shape), CHECKPOINT, "does not fit its saved tensors"),
    "config is a list": (lambda run: (run / CONFIG).write_text("[1, 2]"), CONFIG, "field '(top level)'"),
    "no backbone": (lambda run: edit_config(run, without("backbone")), CONFIG, "field 'backbone': Field required"),
    "no methods": (lambda run: edit_config(run, without("methods")), CONFIG, "field 'methods': Field required"),
    "class count": (
        lambda run: edit_config(run, lambda f: {**f, "classes": [*f["classes"], "Extra"]}),
        CHECKPOINT,
        "but config.json lists",
    ),
    "bad train_config": (
        lambda run: edit_config(run, lambda f: {**f, "train_config": {**f["train_config"], "seed": "x"}}),
        CONFIG,
        "field 'seed'",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_tampered_checkpoint_is_refused_in_one_line(trained, tmp_path, case, command):
    change, file_named, problem = CASES[case]
    run = tampered(trained, tmp_path, change)
    csv = trained[1]
    args = (
        ["evaluate", "--run", run, "--data", csv, "--n-bootstrap", "0"]
        if command == "evaluate"
        else ["predict", str(csv.parent / "images" / "phantom_00000.png"), "--run", run]
    )
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "1000"})
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert str(run / file_named) in lines[0] and problem in lines[0], lines[0]


def test_the_untouched_run_loads_and_its_hash_is_recorded(trained):
    facts = json.loads((trained[0] / CONFIG).read_text())
    assert facts["weights_sha256"] == file_sha256(trained[0] / CHECKPOINT)
    result = CliRunner().invoke(
        app, ["evaluate", "--run", str(trained[0]), "--data", str(trained[1]), "--n-bootstrap", "0", "--json"]
    )
    assert result.exit_code == 0, result.output


def test_predict_records_a_directory_and_a_fifo_and_scores_the_rest(trained, tmp_path):
    """One bad row never stops predict: the directory and the FIFO are skipped with a reason, exit 1."""
    import os

    os.mkfifo(tmp_path / "fifo.png")
    good = trained[1].parent / "images" / "phantom_00000.png"
    result = CliRunner().invoke(
        app,
        ["predict", str(good), str(tmp_path), str(tmp_path / "fifo.png"), "--run", str(trained[0])],
        env={"COLUMNS": "1000"},
    )
    assert result.exit_code == 1, result.output
    assert "phantom_00000.png" in result.stdout and "Traceback" not in result.output
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 2 and "a directory" in result.stderr and "not a regular file" in result.stderr
