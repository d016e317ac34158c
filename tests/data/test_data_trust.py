"""No silent data faults: bad label values and config bounds are refused in one line; one-sided classes are named."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from retune.cli import app
from retune.config import PeftExperimentConfig, TrainConfig, parse_config
from retune.data.readers import read_csv_table
from retune.data.table import one_sided_classes
from retune.errors import ConfigError, DataError

runner = CliRunner()


def _labels_csv(path, bad_value: str):
    rows = ["path,patient_id,Effusion,Nodule"] + [f"img/{i}.png,p{i},{i % 2},{(i + 1) % 2}" for i in range(20)]
    rows[8] = f"img/7.png,p7,{bad_value},1"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("bad_value", ["2", "yes"])
def test_stray_label_value_is_rejected_naming_file_row_column(tmp_path, bad_value):
    """One '2' or 'yes' in the Effusion column used to drop Effusion from the classes silently."""
    csv = _labels_csv(tmp_path / "labels.csv", bad_value)
    with pytest.raises(DataError, match=rf"labels.csv row 9, column 'Effusion': '{bad_value}' is not a label"):
        read_csv_table(csv)


def test_stray_label_value_stops_train_before_work(tmp_path):
    """`retune train` exits 2 with one line (no store is created: the error comes before any work)."""
    csv = _labels_csv(tmp_path / "labels.csv", "2")
    result = runner.invoke(
        app, ["train", "--data", str(csv), "--out", str(tmp_path / "run"), "--store", str(tmp_path / "store")]
    )
    assert result.exit_code == 2, result.output
    assert "row 9, column 'Effusion'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "store").exists()


def test_one_sided_class_is_named_not_dropped():
    labels = np.array([[1, 0], [0, 0], [np.nan, 0]], dtype=np.float32)
    warnings = one_sided_classes(labels, ["Effusion", "Hernia"], "the training split")
    assert len(warnings) == 1 and "'Hernia' has no positives in the training split" in warnings[0]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"retune": {"optim": {"epochs": -5}}}, "retune.optim.epochs"),
        ({"retune": {"optim": {"lr": -0.1}}}, "retune.optim.lr"),
        ({"split": {"fractions": [0.5, 0.3, 0.3]}}, "split.fractions"),
        ({"split": {"fractions": [0.9, 0.1, 0.0]}}, "split.fractions"),
        ({"seed": -1}, "seed"),
        ({"split": {"seed": -3}}, "split.seed"),
    ],
)
def test_invalid_train_config_values_name_the_field(raw, field):
    with pytest.raises(ConfigError, match=rf"field '{field}'"):
        parse_config(raw, TrainConfig, "train.yaml")


def test_invalid_peft_config_values_name_the_field():
    with pytest.raises(ConfigError, match=r"field 'epochs'"):
        parse_config({"epochs": 0}, PeftExperimentConfig, "peft.yaml")


def test_run_warnings_name_a_class_without_training_positives(tmp_path):
    """train/peft runs record in metrics.json each class that has no positives (or negatives) among training rows."""
    from retune.experiments.prepare import table_warnings

    csv = tmp_path / "labels.csv"
    rows = "".join(f"{i}.png,p{i},{i % 2},{int(i == 5)}\n" for i in range(6))
    csv.write_text("path,patient_id,Effusion,Hernia\n" + rows)
    table = read_csv_table(csv)
    warnings = table_warnings(table, np.arange(4))  # Hernia's only positive (row 5) is not in training
    assert len(warnings) == 1 and "'Hernia' has no positives in the training split" in warnings[0]
    assert table.classes == ["Effusion", "Hernia"]  # kept, not dropped
