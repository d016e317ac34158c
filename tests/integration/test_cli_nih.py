"""The ``retune`` CLI end to end on the real NIH ChestX-ray14 subset (300 images; one test uses all 1,599).

Images are embedded once into a module-scoped store; training uses 30 epochs and 200 bootstrap
replicates so the whole file stays within a few minutes on two cores.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from retune.cli import app
from retune.store import EmbeddingStore

pytestmark = pytest.mark.integration

N_ROWS = 300
# Classes trained in the CLI tests: four with positives from several test-split patients (so the
# patient-bootstrap CI of the mean is defined) and two with no positive in the test split (undefined).
CLASSES = ["Atelectasis", "Effusion", "Infiltration", "No_Finding", "Pneumonia", "Edema"]
UNDEFINED_IN_TEST = {"Pneumonia", "Edema"}
ENV = {"COLUMNS": "1000"}  # rich wraps at 80 columns without a terminal; keep every path on one line


def invoke(*args: str):
    """Run ``retune ARGS`` in-process; stdout and stderr are kept apart (``result.output`` has both)."""
    return CliRunner().invoke(app, [str(arg) for arg in args], env=ENV)


def describe(result) -> str:
    return f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli-nih")


@pytest.fixture(scope="module")
def small_csv(nih_head_csv, work: Path) -> Path:
    """The first 300 rows of the NIH subset with absolute image paths, in a folder of its own."""
    return nih_head_csv(N_ROWS, work / "data" / "nih300.csv")


@pytest.fixture(scope="module")
def store(work: Path) -> Path:
    return work / "store"


@pytest.fixture(scope="module")
def first_embed(small_csv: Path, store: Path):
    """``retune embed`` of the 300-row CSV into the module store (runs once)."""
    return invoke("embed", small_csv, "--store", store, "--workers", "0", "--allow-outside-root")


@pytest.fixture(scope="module")
def train_config(work: Path) -> Path:
    path = work / "fast.yaml"
    classes = "".join(f"\n    - {name}" for name in CLASSES)
    path.write_text(f"retune:\n  optim:\n    epochs: 30\nn_bootstrap: 200\ndata:\n  classes:{classes}\n")
    return path


@pytest.fixture(scope="module")
def trained_run(small_csv: Path, store: Path, first_embed, train_config: Path, work: Path):
    """``retune train`` on the 300-row CSV (embeddings already cached); returns (run dir, result)."""
    run = work / "run"
    result = invoke(
        "train", "--data", small_csv, "--out", run, "--store", store, "--config", train_config, "--allow-outside-root"
    )
    return run, result


def test_embed_stores_300_rows_then_computes_nothing(small_csv: Path, store: Path, first_embed):
    """`retune embed` computes and stores 300 images; a second run reports 0 computed."""
    assert first_embed.exit_code == 0, describe(first_embed)
    assert f"{N_ROWS} rows, {N_ROWS} unique images: 0 cached, {N_ROWS} computed" in first_embed.stdout
    assert "0 failed" in first_embed.stdout
    opened = EmbeddingStore(store, create=False)
    (fingerprint,) = opened.summary()["rows"]
    keys, matrix = opened.read_vectors("images", fingerprint)
    assert len(keys) == len(set(keys)) == N_ROWS and matrix.shape == (N_ROWS, 1280)
    again = invoke("embed", small_csv, "--store", store, "--workers", "0", "--allow-outside-root")
    assert again.exit_code == 0, describe(again)
    assert f"{N_ROWS} cached, 0 computed" in again.stdout
    assert len(EmbeddingStore(store, create=False).read_vectors("images", fingerprint)[0]) == N_ROWS


def csv_with_empty_image(source: Path, n_rows: int, broken: Path, patient: str, target: Path) -> Path:
    """The first ``n_rows`` of ``source`` plus one row (patient ``patient``) whose image ``broken`` is a zero-byte
    file."""
    broken.write_bytes(b"")
    frame = pd.read_csv(source, dtype=str, keep_default_na=False).head(n_rows)
    extra = frame.iloc[[0]].copy()
    extra["path"], extra["patient_id"] = str(broken), patient
    pd.concat([frame, extra]).to_csv(target, index=False)
    return target


def test_embed_corrupt_row_exits_1_and_embeds_the_rest(small_csv: Path, work: Path):
    """A zero-byte PNG in the CSV: exit 1, the file is named, the other rows are still embedded."""
    folder = work / "corrupt-case"
    folder.mkdir()
    broken = folder / "broken_scan.png"
    csv_path = csv_with_empty_image(small_csv, 20, broken, "corrupt-patient", folder / "with_corrupt.csv")
    result = invoke("embed", csv_path, "--store", folder / "store", "--workers", "0", "--allow-outside-root")
    assert result.exit_code == 1, describe(result)
    assert str(broken) in result.stderr
    assert "20 computed" in result.stdout and "1 failed" in result.stdout
    assert "Traceback" not in result.output
    errors = list((folder / "store" / "errors").glob("*.csv"))
    assert len(errors) == 1 and str(broken) in errors[0].read_text()


def test_embed_missing_path_column_exits_2(small_csv: Path, work: Path):
    """A CSV without the path column exits 2 with one error line naming the file and the column, no traceback."""
    frame = pd.read_csv(small_csv, dtype=str, keep_default_na=False).head(5).rename(columns={"path": "filename"})
    csv_path = work / "no_path_column.csv"
    frame.to_csv(csv_path, index=False)
    result = invoke("embed", csv_path, "--store", work / "unused-store")
    assert result.exit_code == 2, describe(result)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and "no_path_column.csv" in lines[0] and "'path'" in lines[0]
    assert not (work / "unused-store").exists()


def test_embed_path_escaping_image_root_exits_2(small_csv: Path, work: Path, nih_dir: Path):
    """A relative path that climbs out of the image root exits 2 naming the offending row."""
    folder = work / "escape-case"
    folder.mkdir()
    frame = pd.read_csv(small_csv, dtype=str, keep_default_na=False).head(4)
    frame.loc[2, "path"] = "../../outside/secret.png"
    csv_path = folder / "escaping.csv"
    frame.to_csv(csv_path, index=False)
    # the absolute rows lie inside nih_dir: only the climbing row escapes
    result = invoke("embed", csv_path, "--store", folder / "store", "--image-root", nih_dir)
    assert result.exit_code == 2, describe(result)
    assert "Traceback" not in result.output
    assert "row 4" in result.stderr and "escapes the image root" in result.stderr
    assert "../../outside/secret.png" in result.stderr


def test_error_line_keeps_square_brackets_in_paths(work: Path):
    """A missing CSV in a folder named '[ward 3]' is named verbatim in the one-line error."""
    missing = work / "[ward 3]" / "labels.csv"
    result = invoke("embed", missing, "--store", work / "bracket-store")
    assert result.exit_code == 2, describe(result)
    assert str(missing) in result.stderr, result.stderr


def test_skipped_line_keeps_square_brackets_in_paths(small_csv: Path, work: Path):
    """An unreadable image under a folder named '[ward 3]' is named verbatim in embed's 'skipped' line."""
    folder = work / "[ward 3]"
    folder.mkdir(exist_ok=True)
    broken = folder / "broken.png"
    csv_path = csv_with_empty_image(small_csv, 2, broken, "bracket-patient", folder / "bracket.csv")
    result = invoke("embed", csv_path, "--store", work / "bracket-store", "--workers", "0", "--allow-outside-root")
    assert result.exit_code == 1, describe(result)
    assert str(broken) in result.stderr, result.stderr


def test_train_writes_run_and_honest_metrics(trained_run, store: Path):
    """`retune train` writes the run files; metrics.json has per-class AUROC/CI, null for undefined classes, and the
    linear probe."""
    run, result = trained_run
    assert result.exit_code == 0, describe(result)
    for name in ("checkpoint.safetensors", "config.json", "metrics.json", "roc_curves.png"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert (run / "roc_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "retune" and metrics["backbone"] == "default"
    assert metrics["split"] == "test" and metrics["n_bootstrap"] == 200
    classes = metrics["classes"]
    assert classes == CLASSES
    undefined = []
    for name in classes:
        entry = metrics["per_class"][name]
        assert {"auroc", "auroc_ci", "auprc", "n_pos"} <= set(entry)
        if entry["n_pos"] == 0 or entry["n_neg"] == 0:
            undefined.append(name)
            assert entry["auroc"] is None and entry["auroc_ci"] is None, (name, entry)
        else:
            assert 0.0 <= entry["auroc"] <= 1.0
            low, high = entry["auroc_ci"]
            assert low <= high
    assert set(undefined) == UNDEFINED_IN_TEST
    assert sorted(metrics["undefined_classes"]) == sorted(undefined)
    floor = metrics["min_positives"]
    enough = [n for n in classes if n not in undefined and metrics["per_class"][n]["n_pos"] >= floor]
    assert sorted(metrics["too_few_positives"]) == sorted(set(classes) - set(undefined) - set(enough))
    assert metrics["n_classes_in_mean"] == len(enough) > 0
    in_mean = [metrics["per_class"][n]["auroc"] for n in enough]
    assert math.isclose(metrics["mean_auroc"], sum(in_mean) / len(in_mean), rel_tol=1e-9)
    low, high = metrics["mean_auroc_ci"]
    assert low <= metrics["mean_auroc"] <= high
    probe = metrics["baselines"]["linear_probe"]
    assert probe["method"] == "linear_probe" and probe["classes"] == classes
    assert probe["mean_auroc_ci"][0] <= probe["mean_auroc"] <= probe["mean_auroc_ci"][1]
    assert all(probe["per_class"][name]["auroc"] is None for name in UNDEFINED_IN_TEST)
    assert "zero_shot" in metrics["skipped_baselines"]
    config = json.loads((run / "config.json").read_text())
    assert set(config["methods"]) == {"retune", "linear_probe"}
    assert config["train_config"]["retune"]["optim"]["epochs"] == 30
    assert Path(config["train_config"]["store"]) == store


def test_train_with_the_siglip_objective_records_it_and_evaluates_back(
    small_csv: Path, store: Path, first_embed, train_config: Path, work: Path
):
    """`retune train --objective siglip` trains on the cached embeddings, saves the objective and the learnt bias;
    evaluate reproduces it."""
    run = work / "run-siglip"
    result = invoke(
        "train",
        "--data",
        small_csv,
        "--out",
        run,
        "--store",
        store,
        "--config",
        train_config,
        "--objective",
        "siglip",
        "--json",
        "--allow-outside-root",
    )
    assert result.exit_code == 0, describe(result)
    metrics = json.loads(result.stdout)
    left_out = set(metrics["undefined_classes"]) | set(metrics["too_few_positives"])
    covered = [record["auroc"] for name, record in metrics["per_class"].items() if name not in left_out]
    assert metrics["method"] == "retune" and covered  # the mean is the mean of the classes it covers
    assert metrics["mean_auroc"] == pytest.approx(sum(covered) / len(covered), abs=1e-9)
    assert json.loads((run / "config.json").read_text())["train_config"]["retune"]["objective"] == "siglip"
    assert load_file(str(run / "checkpoint.safetensors"))["retune/logit_bias"] != 0.0
    evaluated = json.loads(
        invoke("evaluate", "--run", run, "--data", small_csv, "--json", "--n-bootstrap", "0").stdout
    )
    assert evaluated["mean_auroc"] == pytest.approx(metrics["mean_auroc"], abs=1e-6)


def test_evaluate_json_on_test_split(trained_run, small_csv: Path):
    """`retune evaluate --json` prints parseable JSON for the test split with the baseline alongside."""
    run, trained = trained_run
    assert trained.exit_code == 0, describe(trained)
    result = invoke("evaluate", "--run", run, "--data", small_csv, "--json", "--n-bootstrap", "200")
    assert result.exit_code == 0, describe(result)
    metrics = json.loads(result.stdout)
    assert metrics["split"] == "test" and metrics["method"] == "retune"
    assert "linear_probe" in metrics["baselines"]
    assert all(metrics["per_class"][name]["auroc"] is None for name in UNDEFINED_IN_TEST)
    saved = json.loads((run / "metrics.json").read_text())
    assert metrics["n_images"] == saved["n_images"]
    assert metrics["mean_auroc"] == pytest.approx(saved["mean_auroc"], abs=1e-6)


def test_evaluating_training_images_is_caught_by_content_and_can_be_excluded(trained_run, small_csv: Path, work: Path):
    """A copy of the training CSV evaluated whole (--split all; by content it is the training CSV, so auto would pick
    its test split) overlaps the run's train+val images: counted, warned about, recorded; --exclude-overlap leaves the
    test split (NIH has byte-identical files, so compare by count)."""
    run, trained = trained_run
    assert trained.exit_code == 0, describe(trained)
    copy = work / "data" / "copy-of-training.csv"
    copy.write_bytes(small_csv.read_bytes())
    sizes = json.loads((run / "config.json").read_text())["split"]["sizes"]
    whole = invoke("evaluate", "--run", run, "--data", copy, "--split", "all", "--json", "--n-bootstrap", "0")
    assert whole.exit_code == 0, describe(whole)
    overlap = json.loads(whole.stdout)["overlap"]
    assert overlap["checked"] and overlap["n_images"] >= sizes["train"] + sizes["val"] and "LEAKAGE" in whole.stderr
    command = ("evaluate", "--run", run, "--data", copy, "--split", "all", "--json", "--n-bootstrap", "0")
    clean = json.loads(invoke(*command, "--exclude-overlap").stdout)
    assert clean["n_images"] == overlap["of"] - overlap["n_images"] <= sizes["test"]


def test_evaluate_a_csv_without_one_readable_image_is_one_line(trained_run, small_csv: Path, work: Path):
    """Every image unreadable: exit 2 naming the CSV, no traceback."""
    run, trained = trained_run
    assert trained.exit_code == 0, describe(trained)
    broken = work / "broken_eval.png"
    broken.write_bytes(b"not an image")
    frame = pd.read_csv(small_csv).head(3)
    frame["path"] = str(broken)
    csv = work / "all_broken.csv"
    frame.to_csv(csv, index=False)
    result = invoke("evaluate", "--run", run, "--data", csv)
    assert result.exit_code == 2, describe(result)
    assert "all_broken.csv: no readable image to evaluate" in result.output and "Traceback" not in result.output


def test_predict_good_and_corrupt_images(trained_run, small_csv: Path, work: Path):
    """`retune predict` prints probabilities for two good images, names the corrupt one and exits 1."""
    run, trained = trained_run
    assert trained.exit_code == 0, describe(trained)
    paths = pd.read_csv(small_csv)["path"].tolist()
    good = [Path(paths[0]), Path(paths[150])]
    corrupt = work / "corrupt_predict.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    output = work / "predictions.csv"
    result = invoke("predict", "--run", run, good[0], good[1], corrupt, "--output", output)
    assert result.exit_code == 1, describe(result)
    assert "Traceback" not in result.output
    assert str(corrupt) in result.stderr
    for path in good:
        assert path.name in result.stdout
    assert corrupt.name not in result.stdout
    frame = pd.read_csv(output)
    assert [Path(p).name for p in frame["image"]] == [p.name for p in good]
    probabilities = frame.drop(columns="image").to_numpy()
    assert list(frame.columns[1:]) == CLASSES
    assert probabilities.shape == (2, len(CLASSES))
    assert ((probabilities >= 0) & (probabilities <= 1)).all()


def test_store_info(store: Path, first_embed):
    """`retune store info` shows the default backbone's 300 images; --json gives the counts."""
    assert first_embed.exit_code == 0, describe(first_embed)
    result = invoke("store", "info", store)
    assert result.exit_code == 0, describe(result)
    assert "default" in result.stdout and str(N_ROWS) in result.stdout
    as_json = invoke("store", "info", store, "--json")
    assert as_json.exit_code == 0, describe(as_json)
    summary = json.loads(as_json.stdout)
    (rows,) = summary["rows"].values()
    assert rows["images"] == N_ROWS
    missing = invoke("store", "info", store.parent / "not-a-store")
    assert missing.exit_code == 2 and "no embedding store" in missing.stderr


def test_store_purge(store: Path, first_embed, work: Path):
    """`retune store purge --yes` deletes a (copied) store; a non-store folder is refused with exit 2."""
    assert first_embed.exit_code == 0, describe(first_embed)
    copy = work / "store-to-purge"
    shutil.copytree(store, copy)
    result = invoke("store", "purge", copy, "--yes")
    assert result.exit_code == 0, describe(result)
    assert "deleted" in result.stdout and not copy.exists()
    keep = work / "not-a-store"
    keep.mkdir(exist_ok=True)
    (keep / "file.txt").write_text("keep")
    refused = invoke("store", "purge", keep, "--yes")
    assert refused.exit_code == 2 and "refusing" in refused.stderr
    assert (keep / "file.txt").exists()
