"""Faults met by outside testing, through the CLI: unverified weights, special files, tracebacks and bad columns all
end in one line naming the file (or column), never a hang, a traceback or a silent change."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from retune.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def no_hang():
    """A read that blocks (a FIFO) fails the test after 60 s instead of hanging the suite."""

    def stop(*_):
        raise TimeoutError("the command blocked")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def one_line_error(result, *fragments: str) -> None:
    """Exit 1 or 2 with an ``error:`` line holding every fragment, and no traceback."""
    assert result.exit_code in (1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    text = " ".join(result.output.split())
    assert "Traceback" not in text and "error:" in text
    for fragment in fragments:
        assert fragment in text, text


@pytest.fixture
def run_copy(strict_run, tmp_path) -> Path:
    """A copy of the shared trained run that a test may damage."""
    return Path(shutil.copytree(strict_run["run"], tmp_path / "run"))


def an_image(strict_run) -> str:
    return str(sorted((strict_run["csv"].parent / "images").glob("*.png"))[0])


def test_a_run_without_its_weights_hash_is_refused_unless_no_verify(strict_run, run_copy):
    config = run_copy / "config.json"
    facts = json.loads(config.read_text())
    del facts["weights_sha256"]
    config.write_text(json.dumps(facts))
    refused = runner.invoke(app, ["predict", "--run", str(run_copy), an_image(strict_run)])
    one_line_error(refused, "records no weights_sha256", "--no-verify")
    loaded = runner.invoke(app, ["predict", "--run", str(run_copy), an_image(strict_run), "--no-verify", "--json"])
    assert loaded.exit_code == 0, loaded.output
    assert "loaded without checking its weights hash" in " ".join(loaded.stderr.split())


def test_special_files_are_refused_in_one_line_never_read(strict_run, run_copy, tmp_path):
    fifo = tmp_path / "labels.csv"
    os.mkfifo(fifo)
    store = ["--store", str(strict_run["store"])]
    for data in (fifo, Path("/dev/zero")):
        result = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "out"), *store])
        one_line_error(result, f"{data}: not a regular file")
    result = runner.invoke(app, ["train", "--config", str(fifo), "--out", str(tmp_path / "out"), *store])
    one_line_error(result, "not a regular file", "YAML")
    (run_copy / "checkpoint.safetensors").unlink()
    (run_copy / "checkpoint.safetensors").symlink_to("/dev/zero")
    result = runner.invoke(app, ["predict", "--run", str(run_copy), an_image(strict_run)])
    one_line_error(result, "checkpoint.safetensors: not a regular file")
    (run_copy / "config.json").unlink()
    os.mkfifo(run_copy / "config.json")
    result = runner.invoke(app, ["predict", "--run", str(run_copy), an_image(strict_run)])
    one_line_error(result, "config.json: not a regular file")


def test_listed_tracebacks_are_one_line_naming_the_file(strict_run, run_copy, tmp_path):
    run, csv = str(strict_run["run"]), strict_run["csv"]
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    frame.loc[0, "path"] = "images/a\0b.png"
    frame.to_csv(csv.parent / "nul.csv", index=False)
    result = runner.invoke(app, ["evaluate", "--run", run, "--data", str(csv.parent / "nul.csv")])
    one_line_error(result, "nul.csv row 2, column 'path'", "NUL byte")

    result = runner.invoke(app, ["predict", "--run", run, str(tmp_path / "missing.png")])
    one_line_error(result, "no readable image")

    (tmp_path / "a-file").write_text("")
    out = str(tmp_path / "a-file" / "run")
    result = runner.invoke(app, ["train", "--data", str(csv), "--out", out, "--store", str(strict_run["store"])])
    one_line_error(result, "a-file/run")

    (run_copy / "training_digests.json").write_text('{"salt": 1, "digests": 2}')
    result = runner.invoke(app, ["evaluate", "--run", str(run_copy), "--data", str(csv), "--n-bootstrap", "5"])
    one_line_error(result, "training_digests.json: malformed")

    facts = (run_copy / "config.json").read_text().rstrip().removesuffix("}")
    (run_copy / "config.json").write_text(facts + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}")
    result = runner.invoke(app, ["predict", "--run", str(run_copy), an_image(strict_run)])
    one_line_error(result, "config.json: JSON nested too deeply")


@pytest.mark.slow  # seconds of training: make test and CI run it, make test-fast does not
def test_resuming_a_scenario_with_damaged_saved_state_is_one_line(strict_run, tmp_path):
    config = tmp_path / "scenario.yaml"
    config.write_text(
        f"name: damaged\ndata: {{csv: {strict_run['csv']}}}\nstore: {strict_run['store']}\n"
        "generate: {kind: class, n_tasks: 2}\nmethods: [naive]\nn_bootstrap: 5\nmin_positives: 1\n"
        "retune: {optim: {epochs: 2, min_epochs: 1}}\n"
    )
    out = tmp_path / "out"
    command = ["scenario", "run", str(config), "--out", str(out), "--quiet"]
    first = runner.invoke(app, command)
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, command)
    assert again.exit_code == 0 and "resuming: 1 of 1 runs done" in again.output, again.output
    scores = next(out.glob("work/naive/*/task1/test_scores.npy"))
    scores.write_bytes(scores.read_bytes()[:100])
    one_line_error(runner.invoke(app, command), "test_scores.npy: truncated or corrupt")
    (out / "work" / "naive" / "fingerprint.json").write_text("{not json")
    one_line_error(runner.invoke(app, command), "fingerprint.json: not valid JSON")


def test_duplicate_bad_and_blank_columns_are_named(strict_run, tmp_path):
    csv = strict_run["csv"]
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    options = ["--store", str(strict_run["store"]), "--out", str(tmp_path / "out"), "--epochs", "1"]

    def train(table: pd.DataFrame, name: str):
        table.to_csv(csv.parent / name, index=False)
        return runner.invoke(app, ["train", "--data", str(csv.parent / name), *options])

    duplicated = pd.concat([frame, frame[["Effusion"]]], axis=1)
    one_line_error(train(duplicated, "duplicate.csv"), "column 'Effusion' appears more than once")
    two_paths = pd.concat([frame, frame[["path"]]], axis=1)  # never read as path + path.1
    one_line_error(train(two_paths, "two-paths.csv"), "column 'path' appears more than once")
    custom = frame.assign(Custom=["yes" if row % 4 == 0 else str(row % 2) for row in range(len(frame))])
    one_line_error(train(custom, "custom.csv"), "column 'Custom': 'yes' is not a label")
    one_line_error(train(frame[["path", "patient_id"]], "unlabelled.csv"), "no label column")
    blank = train(frame.assign(Edema=""), "blank.csv")
    assert blank.exit_code == 0, blank.output
    assert "not labelled (every value blank), so not trained or evaluated: Edema" in " ".join(blank.output.split())
    assert "Edema" not in json.loads((tmp_path / "out" / "config.json").read_text())["classes"]
