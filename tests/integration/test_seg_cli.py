"""``retune seg`` end to end on a few real cxr-seg images: train, evaluate on other patients (JSON), predict masks at
the original size, and a one-line error for a table without masks."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from retune.cli import app

pytestmark = pytest.mark.integration

ENV = {"COLUMNS": "1000"}


@pytest.fixture(scope="module")
def cxr_seg(shared_data: Path) -> Path:
    folder = shared_data / "cxr-seg"
    if not (folder / "masks.csv").exists():
        pytest.skip(f"{folder}/masks.csv not found")
    return folder


def test_seg_train_evaluate_predict_through_the_cli(cxr_seg, tmp_path):
    frame = pd.read_csv(cxr_seg / "masks.csv", dtype=str, keep_default_na=False)
    patients = frame["patient_id"].unique()
    train = frame[frame["patient_id"].isin(patients[:14])][["path", "patient_id", "mask_lungs"]]
    other = frame[frame["patient_id"].isin(patients[-4:])][["path", "patient_id", "mask_lungs"]]
    train.to_csv(tmp_path / "train.csv", index=False)
    other.to_csv(tmp_path / "other.csv", index=False)
    (tmp_path / "seg.yaml").write_text(
        f"store: {tmp_path / 'store'}\nimage_size: 64\nwidth: 8\nn_bootstrap: 20\n"
        "optim: {epochs: 2, batch_size: 8}\nsplit: {fractions: [0.6, 0.2, 0.2]}\n"
    )
    runner = CliRunner()
    root = ["--image-root", str(cxr_seg)]
    result = runner.invoke(app, ["seg", "train", "--data", str(tmp_path / "train.csv"), *root, "--structures",
                                 "lungs", "--config", str(tmp_path / "seg.yaml"), "--out", str(tmp_path / "run"),
                                 "-q"], env=ENV)
    assert result.exit_code == 0, result.output
    assert "predict_nothing" in result.output and "scratch_unet" in result.output

    result = runner.invoke(app, ["seg", "evaluate", "--run", str(tmp_path / "run"), "--data",
                                 str(tmp_path / "other.csv"), *root, "--json", "-q"], env=ENV)
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["n_images"] == len(other) and metrics["overlap_with_training"]["n_images"] == 0
    assert metrics["per_method"]["predict_nothing"]["lungs"]["dice"] == 0.0
    assert metrics["per_method"]["fpn"]["lungs"]["dice"] > 0.0

    image = cxr_seg / other["path"].iloc[0]
    result = runner.invoke(app, ["seg", "predict", str(image), "--run", str(tmp_path / "run"), "--out",
                                 str(tmp_path / "masks")], env=ENV)
    assert result.exit_code == 0, result.output
    with Image.open(image) as original, Image.open(tmp_path / "masks" / f"{image.stem}.lungs.png") as mask:
        assert mask.size == original.size


def test_a_table_without_masks_is_one_line_and_nothing_is_written(cxr_seg, tmp_path):
    (tmp_path / "plain.csv").write_text("path,patient_id,lungs\nimages/x.png,1,1\n")
    result = CliRunner().invoke(app, ["seg", "train", "--data", str(tmp_path / "plain.csv"), "--format", "masks_csv",
                                      "--out", str(tmp_path / "run")], env=ENV)
    assert result.exit_code == 2
    last = result.output.strip().splitlines()[-1]
    assert "no mask_* column" in last and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
