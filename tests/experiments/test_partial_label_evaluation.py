"""Evaluating a run on CSVs that label some of its classes, leave cells blank, or carry a site column."""

from __future__ import annotations

import pandas as pd
import pytest

import retune
from retune.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory) -> dict:
    """A tiny `retune.train` run on 48 phantoms (6 classes), and their labels.csv as a frame."""
    from retune.data.phantoms import write_phantom_dataset

    root = tmp_path_factory.mktemp("partial")
    csv = write_phantom_dataset(root / "phantoms", n=48, seed=5)
    config = {"data": {"csv": str(csv)}, "store": str(root / "store"), "baselines": [], "n_bootstrap": 10,
              "min_positives": 1, "retune": {"optim": {"epochs": 2}}}
    run = retune.train(config, out=root / "run")
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    frame["path"] = [str(csv.parent / path) for path in frame["path"]]
    return {"run": run, "frame": frame, "root": root}


def write(frame: pd.DataFrame, path) -> str:
    frame.to_csv(path, index=False)
    return str(path)


def test_a_csv_labelling_some_classes_scores_those_and_lists_the_rest(phantom_run, tmp_path):
    frame = phantom_run["frame"][["path", "patient_id", "Effusion", "Mass", "Cardiomegaly"]].copy()
    frame["Cardiomegaly"] = ""  # present but blank throughout: labels nothing
    frame.loc[:9, "Mass"] = ""  # blank cells: not labelled for those images
    frame["Fracture"] = ["1", "0"] * (len(frame) // 2)  # labelled here, never learned by the run
    frame["site"] = ["north"] * 24 + ["south"] * 24
    result = phantom_run["run"].evaluate(write(frame, tmp_path / "site.csv"), n_bootstrap=10, min_positives=1,
                                         allow_outside_root=True)
    assert result["classes"] == ["Effusion", "Mass"]
    assert result["unlabelled_classes"] == ["Cardiomegaly", "Nodule", "Pneumothorax", "Opacity"]
    assert result["unlearned_classes"] == ["Fracture"]
    mass = result["per_class"]["Mass"]
    assert mass["n_pos"] + mass["n_neg"] == len(frame) - 10
    assert any("does not label 4 learned class(es)" in w for w in result["warnings"])
    assert set(result["per_site"]) == {"north", "south"}
    assert result["per_site"]["north"]["n_images"] == 24


def test_a_csv_labelling_none_of_the_classes_is_refused(phantom_run, tmp_path):
    frame = phantom_run["frame"][["path", "patient_id", "Effusion"]].copy()
    frame["Effusion"] = ""  # present but blank: labels nothing
    frame["Fracture"] = "0"
    with pytest.raises(ConfigError, match=r"other.csv: labels none of the model's classes \(.*\); its labelled "
                                          r"classes: Fracture$"):
        phantom_run["run"].evaluate(write(frame, tmp_path / "other.csv"), allow_outside_root=True)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("Effusion", "2", r"bad.csv.*row 4.*'Effusion'.*is not a label"),
        ("site", " ", r"bad.csv.*row 4.*'site'.*is blank"),
    ],
)
def test_bad_label_or_site_values_name_file_row_and_column(phantom_run, tmp_path, column, value, message):
    frame = phantom_run["frame"][["path", "patient_id", "Effusion"]].copy()
    frame["site"] = "north"
    frame.loc[2, column] = value
    with pytest.raises(DataError, match=message):
        phantom_run["run"].evaluate(write(frame, tmp_path / "bad.csv"), allow_outside_root=True)
