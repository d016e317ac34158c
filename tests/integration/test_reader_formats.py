"""Each reader format through the CLI (`retune embed`, `retune train`, `retune evaluate`) on real label tables.

The NIH table is the real ``Data_Entry_2017_v2020`` restricted to the images of the NIH subset; the CheXpert
table is real CheXpert rows (their columns and labels) whose paths point, in the CheXpert folder layout, at
those same images (symlinks in a temp dir). Both tables are built in temp dirs; ../shared stays read-only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from retune.cli import app

pytestmark = pytest.mark.integration

N_IMAGES = 80
NIH_CLASSES = ["Infiltration", "Effusion", "Atelectasis"]
CHEXPERT_CLASSES = ["Lung Opacity", "Pleural Effusion", "Support Devices"]


def invoke(*args: object):
    return CliRunner().invoke(app, [str(arg) for arg in args], env={"COLUMNS": "1000"})


def describe(result) -> str:
    return f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reader-formats")


@pytest.fixture(scope="module")
def nih_images(nih_dir: Path) -> list[str]:
    """The first N image names of the NIH subset (sorted, so the selection is stable)."""
    return sorted(path.name for path in (nih_dir / "images").glob("*.png"))[:N_IMAGES]


@pytest.fixture(scope="module")
def data_entry_csv(label_tables: Path, nih_images: list[str], work: Path) -> Path:
    """Real Data_Entry rows (all columns, original header) for the chosen NIH images."""
    table = pd.read_csv(label_tables / "Data_Entry_2017_v2020.csv.gz", dtype=str, keep_default_na=False)
    rows = table[table["Image Index"].isin(nih_images)]
    assert len(rows) == len(nih_images)
    target = work / "nih" / "Data_Entry_2017_v2020.csv"
    target.parent.mkdir()
    rows.to_csv(target, index=False)
    return target


@pytest.fixture(scope="module")
def chexpert_csv(label_tables: Path, nih_dir: Path, nih_images: list[str], work: Path) -> Path:
    """Real CheXpert rows (header, labels with -1/blank) whose Path points at the NIH images in CheXpert's layout."""
    table = pd.read_csv(label_tables / "chexpert_train.csv.gz", dtype=str, keep_default_na=False, nrows=N_IMAGES)
    root = work / "chexpert"
    paths = []
    for row, name in enumerate(nih_images):
        relative = Path("CheXpert-v1.0-small/train") / f"patient{row // 2 + 1:05d}" / "study1" / name
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).symlink_to(nih_dir / "images" / name)
        paths.append(relative.as_posix())
    table["Path"] = paths
    target = root / "train.csv"
    table.to_csv(target, index=False)
    return target


def train_config(work: Path, name: str, classes: list[str]) -> Path:
    """Few epochs and bootstrap replicates: these tests prove the formats flow through, not model quality."""
    path = work / f"{name}.yaml"
    listed = "".join(f"\n    - {c}" for c in classes)
    optim = "retune:\n  optim:\n    epochs: 5\n    min_epochs: 1\n"
    path.write_text(f"{optim}n_bootstrap: 20\ndata:\n  classes:{listed}\n")
    return path


@pytest.mark.parametrize("explicit", [True, False], ids=["--format nih", "auto-detected"])
def test_embed_a_data_entry_table(data_entry_csv: Path, nih_dir: Path, work: Path, explicit: bool):
    """`retune embed` reads an NIH Data_Entry table, named or detected by its header, and embeds every image."""
    store = work / f"store-nih-{explicit}"
    options = ["--format", "nih"] if explicit else []
    result = invoke("embed", data_entry_csv, *options, "--image-root", nih_dir / "images", "--store", store,
                    "--workers", "0")
    assert result.exit_code == 0, describe(result)
    assert f"{N_IMAGES} rows, {N_IMAGES} unique images" in result.stdout and "0 failed" in result.stdout


def test_train_then_evaluate_a_data_entry_table(data_entry_csv: Path, nih_dir: Path, work: Path):
    """`retune train --format nih` trains on the Data_Entry table; `retune evaluate` reads it back the same way."""
    run, store = work / "run-nih", work / "store-nih-True"
    result = invoke("train", "--data", data_entry_csv, "--format", "nih", "--image-root", nih_dir / "images",
                    "--store", store, "--out", run, "--config", train_config(work, "nih", NIH_CLASSES), "--json")
    assert result.exit_code == 0, describe(result)
    saved = json.loads((run / "config.json").read_text())
    assert saved["classes"] == NIH_CLASSES and saved["train_config"]["data"]["format"] == "nih"
    assert saved["data"]["n_images"] == N_IMAGES
    evaluated = invoke("evaluate", "--run", run, "--data", data_entry_csv, "--n-bootstrap", "20", "--json")
    assert evaluated.exit_code == 0, describe(evaluated)
    assert json.loads(evaluated.stdout)["split"] == "test"


def test_embed_and_train_a_chexpert_table(chexpert_csv: Path, work: Path):
    """`retune embed --format chexpert` and `retune train` on CheXpert's columns (uncertain labels ignored)."""
    store = work / "store-chexpert"
    # the CheXpert layout is symlinks to NIH images elsewhere: reading them needs the opt-out from confinement
    embedded = invoke(
        "embed", chexpert_csv, "--format", "chexpert", "--store", store, "--workers", "0", "--allow-outside-root"
    )
    assert embedded.exit_code == 0, describe(embedded)
    assert f"{N_IMAGES} rows" in embedded.stdout and "0 failed" in embedded.stdout
    run = work / "run-chexpert"
    result = invoke("train", "--data", chexpert_csv, "--format", "chexpert", "--store", store, "--out", run,
                    "--config", train_config(work, "chexpert", CHEXPERT_CLASSES), "--allow-outside-root")
    assert result.exit_code == 0, describe(result)
    saved = json.loads((run / "config.json").read_text())
    assert saved["classes"] == CHEXPERT_CLASSES and saved["data"]["n_images"] == N_IMAGES
