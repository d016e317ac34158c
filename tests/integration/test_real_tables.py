"""The readers on the real NIH, CheXpert label tables and the 1,599-image NIH subset in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retune.data.readers import CHEXPERT_FINDINGS, NIH_FINDINGS, read_chexpert, read_nih, read_table
from retune.data.splits import patient_split

pytestmark = pytest.mark.integration


def test_nih_subset_labels_csv(nih_dir: Path):
    table = read_table(nih_dir / "labels.csv")
    assert len(table) == 1599
    assert len(set(table.patients)) == 827
    assert table.classes == [*NIH_FINDINGS, "No_Finding"]
    assert int(table.frame["Pneumonia"].sum()) == 503
    assert int(table.frame["No_Finding"].sum()) == 808
    assert not np.isnan(table.labels()).any()
    missing = [path for path in table.paths if not Path(path).is_file()]
    assert missing == []


def test_nih_subset_patient_split_has_no_overlap(nih_dir: Path):
    table = read_table(nih_dir / "labels.csv")
    splits = patient_split(table.patients, seed=0)
    owners = {name: set(table.patients[rows]) for name, rows in splits.items()}
    assert not (owners["train"] & owners["val"] or owners["train"] & owners["test"] or owners["val"] & owners["test"])
    assert sum(len(rows) for rows in splits.values()) == len(table)
    assert abs(len(splits["train"]) / len(table) - 0.7) < 0.05


def test_nih_full_data_entry_table(label_tables: Path):
    table = read_nih(label_tables / "Data_Entry_2017_v2020.csv.gz")
    assert len(table) == 112_120
    assert len(set(table.patients)) == 30_805
    assert table.classes == list(NIH_FINDINGS)
    assert table.paths[0].endswith("/00000001_000.png")
    assert int(table.frame["Hernia"].sum()) == 227
    splits = patient_split(table.patients, seed=0)
    assert not set(table.patients[splits["train"]]) & set(table.patients[splits["test"]])


def test_chexpert_train_table_under_each_uncertainty_policy(label_tables: Path):
    csv = label_tables / "chexpert_train.csv.gz"
    ignore = read_chexpert(csv, uncertainty="ignore")
    ones = read_chexpert(csv, uncertainty="ones")
    zeros = read_chexpert(csv, uncertainty="zeros")
    assert len(ignore) == 223_414 and ignore.classes == list(CHEXPERT_FINDINGS)
    assert len(set(ignore.patients)) == 64_540

    def count(table, value):
        column = table.frame["Atelectasis"]
        return int(column.isna().sum()) if np.isnan(value) else int((column == value).sum())

    assert (count(ignore, np.nan), count(ignore, 1.0), count(ignore, 0.0)) == (188_710, 33_376, 1_328)
    assert (count(ones, np.nan), count(ones, 1.0), count(ones, 0.0)) == (154_971, 67_115, 1_328)
    assert (count(zeros, np.nan), count(zeros, 1.0), count(zeros, 0.0)) == (154_971, 33_376, 35_067)
    assert count(ones, 1.0) > count(zeros, 1.0)
    # "No Finding" has no uncertain labels, so the policies agree on it.
    assert np.array_equal(ones.frame["No Finding"].fillna(-9), zeros.frame["No Finding"].fillna(-9))
