"""CSV readers: label parsing and policies, path resolution, patient ids, and one-line errors naming
file/row/column."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from retune.data import readers
from retune.data.readers import (
    CHEXPERT_FINDINGS,
    NIH_FINDINGS,
    READERS,
    detect_format,
    read_chexpert,
    read_csv_table,
    read_mimic,
    read_nih,
    read_table,
)
from retune.errors import ConfigError, DataError

CHEXPERT_HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_FINDINGS)
NIH_HEADER = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"


def _write(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _labels(table, name: str) -> list[float]:
    return table.frame[name].tolist()


def _same(got: list[float], expected: list[float]) -> bool:
    """Equality that treats NaN == NaN."""
    return len(got) == len(expected) and all(
        (math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(got, expected)
    )


@pytest.fixture
def generic_csv(tmp_path: Path) -> Path:
    return _write(
        tmp_path / "labels.csv",
        "path,patient_id,age,sex,Pneumonia,Effusion,notes,report",
        "img/a.png,p1,1,F,1,0,ok,clear lungs",
        "img/b.png,p1,0,F,-1,,fine,",
        "img/c.png,p2,1,M,0.0,1.0,x,effusion on the left",
    )


def test_generic_csv_infers_label_columns_and_resolves_paths(generic_csv):
    table = read_csv_table(generic_csv)
    assert table.classes == ["Pneumonia", "Effusion"]  # age is metadata, sex/notes are not labels
    root = generic_csv.parent.resolve()
    assert table.image_root == root
    assert table.paths == [str(root / "img" / name) for name in ("a.png", "b.png", "c.png")]
    assert table.patients.tolist() == ["p1", "p1", "p2"]
    assert table.frame["report"].tolist() == ["clear lungs", "", "effusion on the left"]
    assert "patient_column_missing" not in table.extra
    assert _same(_labels(table, "Pneumonia"), [1.0, math.nan, 0.0])
    assert _same(_labels(table, "Effusion"), [0.0, math.nan, 1.0])
    assert table.labels().dtype == np.float32


@pytest.mark.parametrize(("policy", "uncertain"), [("ones", 1.0), ("zeros", 0.0), ("ignore", math.nan)])
def test_uncertainty_policy_maps_minus_one(generic_csv, policy, uncertain):
    table = read_csv_table(generic_csv, uncertainty=policy)
    assert _same(_labels(table, "Pneumonia"), [1.0, uncertain, 0.0])


def test_unknown_uncertainty_policy_is_config_error(generic_csv):
    with pytest.raises(ConfigError, match="unknown uncertainty policy 'maybe'"):
        read_csv_table(generic_csv, uncertainty="maybe")


def test_explicit_classes_and_image_root(generic_csv, tmp_path):
    table = read_csv_table(generic_csv, image_root=tmp_path / "elsewhere", classes=["Effusion"])
    assert table.classes == ["Effusion"]
    assert "Pneumonia" not in table.frame.columns
    assert table.paths[0] == str((tmp_path / "elsewhere").resolve() / "img" / "a.png")


def test_missing_patient_column_makes_each_image_its_own_patient(tmp_path):
    csv = _write(tmp_path / "labels.csv", "path,Mass", "a.png,1", "b.png,0")
    table = read_csv_table(csv)
    assert table.extra["patient_column_missing"] is True
    assert table.patients.tolist() == table.paths
    no_patients = read_csv_table(_write(tmp_path / "p.csv", "path,patient_id,Mass", "a.png,x,1"), patient_column=None)
    assert no_patients.patients.tolist() == no_patients.paths


def test_absolute_paths_outside_the_root_are_refused_unless_allowed(tmp_path):
    """Confinement by default; the opt-out keeps absolute paths as they are and leaves the table unconfined."""
    outside = tmp_path.parent / "outside.png"
    inside = tmp_path.resolve() / "img" / "b.png"
    csv = _write(tmp_path / "labels.csv", "path,Mass", f"{inside},1", f"{outside},1", "./img/../img/a.png,0")
    refused = r"labels.csv row 3, column 'path': .*outside.png' escapes the image root .*--allow-outside-root"
    with pytest.raises(DataError, match=refused):
        read_csv_table(csv)
    table = read_csv_table(csv, allow_outside_root=True)
    assert table.paths == [str(inside), str(outside), str(tmp_path.resolve() / "img" / "a.png")]
    assert table.confined_root is None
    confined = read_csv_table(_write(tmp_path / "in.csv", "path,Mass", f"{inside},1"))
    assert confined.paths == [str(inside)] and confined.confined_root == tmp_path.resolve()


def test_duplicate_paths_are_allowed(tmp_path):
    table = read_csv_table(_write(tmp_path / "labels.csv", "path,Mass", "a.png,1", "a.png,0"))
    assert len(table) == 2 and table.paths[0] == table.paths[1]


def test_missing_path_column_lists_available_columns(tmp_path):
    csv = _write(tmp_path / "labels.csv", "a,b,c", "1,0,1")
    with pytest.raises(DataError) as caught:
        read_csv_table(csv)
    assert str(caught.value) == "labels.csv: missing column 'path' (columns: a, b, c)"


def test_unknown_class_names_the_file_and_class(generic_csv):
    with pytest.raises(DataError) as caught:
        read_csv_table(generic_csv, classes=["Pneumonia", "Pneumothorax"])
    message = str(caught.value)
    assert message.startswith("labels.csv: missing class column 'Pneumothorax' (columns: path, patient_id,")


def test_escaping_path_names_file_row_and_column(tmp_path):
    csv = _write(tmp_path / "labels.csv", "path,Mass", "a.png,1", "sub/../../x.png,0")
    with pytest.raises(DataError) as caught:
        read_csv_table(csv, image_root=tmp_path / "images")
    root = (tmp_path / "images").resolve()
    assert str(caught.value) == (
        f"labels.csv row 3, column 'path': 'sub/../../x.png' escapes the image root {root} "
        "(pass --allow-outside-root to read such paths)"
    )


def test_bad_label_value_names_file_row_and_column(generic_csv):
    _write(generic_csv, "path,Pneumonia", "a.png,1", "b.png,0", "c.png,yes")
    with pytest.raises(DataError) as caught:
        read_csv_table(generic_csv, classes=["Pneumonia"])
    assert str(caught.value).startswith("labels.csv row 4, column 'Pneumonia': 'yes' is not a label")


def test_blank_path_is_an_error(tmp_path):
    csv = _write(tmp_path / "labels.csv", "path,Mass", "a.png,1", ",0")
    with pytest.raises(DataError, match=r"labels.csv row 3, column 'path': '' is blank"):
        read_csv_table(csv)


@pytest.mark.parametrize("content", ["", "path,Mass\n"])
def test_empty_csv_is_an_error(tmp_path, content):
    (tmp_path / "labels.csv").write_text(content)
    with pytest.raises(DataError, match="labels.csv: "):
        read_csv_table(tmp_path / "labels.csv")


def test_missing_csv_is_an_error(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_csv_table(tmp_path / "absent.csv")


def test_chexpert_reader_parses_patients_and_policies(tmp_path):
    blank = "," * (len(CHEXPERT_FINDINGS) - 1)
    atelectasis = CHEXPERT_FINDINGS.index("Atelectasis")

    def row(path: str, value: str) -> str:
        values = [""] * len(CHEXPERT_FINDINGS)
        values[atelectasis] = value
        return f"{path},Female,68,Frontal,AP," + ",".join(values)

    csv = _write(
        tmp_path / "train.csv",
        CHEXPERT_HEADER,
        row("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", "1.0"),
        row("CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg", "-1.0"),
        row("CheXpert-v1.0-small/train/patient00002/study2/view2_lateral.jpg", "0.0"),
        f"CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg,Male,40,Frontal,PA,{blank}",
    )
    ones = read_chexpert(csv, uncertainty="ones", image_root=tmp_path)
    assert ones.classes == list(CHEXPERT_FINDINGS)
    assert ones.patients.tolist() == ["patient00001", "patient00002", "patient00002", "patient00003"]
    assert ones.paths[0] == str(tmp_path.resolve() / "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg")
    assert _same(_labels(ones, "Atelectasis"), [1.0, 1.0, 0.0, math.nan])
    assert _same(_labels(read_chexpert(csv, uncertainty="zeros"), "Atelectasis"), [1.0, 0.0, 0.0, math.nan])
    assert _same(_labels(read_chexpert(csv), "Atelectasis"), [1.0, math.nan, 0.0, math.nan])
    assert detect_format(csv) == "chexpert" and read_table(csv).classes == list(CHEXPERT_FINDINGS)


def test_chexpert_path_without_patient_is_an_error(tmp_path):
    blank = "," * (len(CHEXPERT_FINDINGS) - 1)
    csv = _write(tmp_path / "train.csv", CHEXPERT_HEADER, f"train/study1/view1.jpg,Male,40,Frontal,PA,{blank}")
    with pytest.raises(
        DataError, match=r"train.csv row 2, column 'Path': 'train/study1/view1.jpg' has no 'patientNNNNN'"
    ):
        read_chexpert(csv)


@pytest.fixture
def nih_csv(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    return _write(
        tmp_path / "Data_Entry_2017.csv",
        NIH_HEADER,
        "00000001_000.png,Cardiomegaly,0,1,57,M,PA",
        "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA",
        "00000002_000.png,No Finding,0,2,81,M,PA",
        "00000003_000.png,Pleural_Thickening|Hernia,0,3,74,F,AP",
    )


def test_nih_reader_one_hot_encodes_findings(nih_csv):
    table = read_nih(nih_csv)
    assert table.classes == list(NIH_FINDINGS)
    assert table.image_root == (nih_csv.parent / "images").resolve()
    assert table.paths[0] == str((nih_csv.parent / "images" / "00000001_000.png").resolve())
    assert table.patients.tolist() == ["1", "1", "2", "3"]
    assert _labels(table, "Cardiomegaly") == [1.0, 1.0, 0.0, 0.0]
    assert _labels(table, "Emphysema") == [0.0, 1.0, 0.0, 0.0]
    assert _labels(table, "Pleural_Thickening") == [0.0, 0.0, 0.0, 1.0]
    assert table.labels()[2].sum() == 0  # "No Finding" is all negatives
    assert not np.isnan(table.labels()).any()
    assert _labels(read_nih(nih_csv, classes=["No Finding"]), "No Finding") == [0.0, 0.0, 1.0, 0.0]
    assert detect_format(nih_csv) == "nih" and len(read_table(nih_csv)) == 4


def test_nih_unknown_finding_names_the_row(nih_csv):
    _write(
        nih_csv,
        NIH_HEADER,
        "00000001_000.png,Cardiomegaly,0,1,57,M,PA",
        "00000001_001.png,Effusion|Pneumonitis,1,1,58,M,PA",
    )
    with pytest.raises(
        DataError, match=r"Data_Entry_2017.csv row 3, column 'Finding Labels': 'Pneumonitis' is not an NIH finding"
    ):
        read_nih(nih_csv)


def test_nih_unknown_class_is_config_error(nih_csv):
    with pytest.raises(ConfigError, match="unknown NIH class 'Pleural Thickening'"):
        read_nih(nih_csv, classes=["Pleural Thickening"])


@pytest.fixture
def mimic_csvs(tmp_path: Path) -> tuple[Path, Path]:
    findings = ",".join(CHEXPERT_FINDINGS)
    pneumonia = CHEXPERT_FINDINGS.index("Pneumonia")

    def labels(subject: str, study: str, value: str) -> str:
        values = [""] * len(CHEXPERT_FINDINGS)
        values[pneumonia] = value
        return f"{subject},{study}," + ",".join(values)

    label_csv = _write(
        tmp_path / "mimic-cxr-2.0.0-chexpert.csv",
        f"subject_id,study_id,{findings}",
        labels("10000032", "50414267", "1.0"),
        labels("10000032", "53189527", "-1.0"),
        labels("10000764", "57375967", "0.0"),
    )
    metadata_csv = _write(
        tmp_path / "mimic-cxr-2.0.0-metadata.csv",
        "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition",
        "02aa804e-bde0afdd,10000032,50414267,CHEST (PA AND LAT),PA",
        "174413ec-4ec4c1f7,10000032,50414267,CHEST (PA AND LAT),LATERAL",
        "2a2277a9-b0ded155,10000032,53189527,CHEST (PA AND LAT),AP",
        "096052b7-d256dc40,10000764,57375967,CHEST (PORTABLE AP),AP",
        "ffffffff-00000000,19999999,59999999,CHEST (PA AND LAT),PA",  # study without labels
    )
    return label_csv, metadata_csv


def test_mimic_reader_joins_labels_to_images(mimic_csvs, tmp_path):
    label_csv, metadata_csv = mimic_csvs
    table = read_mimic(label_csv, metadata_csv=metadata_csv, image_root=tmp_path / "mimic", uncertainty="ones")
    root = (tmp_path / "mimic").resolve()
    assert table.paths[0] == str(root / "files/p10/p10000032/s50414267/02aa804e-bde0afdd.jpg")
    assert len(table) == 4 and table.extra["unlabelled_images_dropped"] == 1
    assert table.patients.tolist() == ["10000032", "10000032", "10000032", "10000764"]
    assert _labels(table, "Pneumonia") == [1.0, 1.0, 1.0, 0.0]
    assert math.isnan(_labels(read_mimic(label_csv, metadata_csv=metadata_csv, image_root=tmp_path), "Pneumonia")[2])


def test_mimic_views_filter(mimic_csvs, tmp_path):
    label_csv, metadata_csv = mimic_csvs
    table = read_mimic(label_csv, metadata_csv=metadata_csv, image_root=tmp_path, views=("PA", "AP"))
    assert len(table) == 3 and not any("174413ec" in path for path in table.paths)
    with pytest.raises(DataError, match="no images with ViewPosition in"):
        read_mimic(label_csv, metadata_csv=metadata_csv, image_root=tmp_path, views=("LL",))


def test_mimic_bad_subject_id_names_row(mimic_csvs, tmp_path):
    label_csv, metadata_csv = mimic_csvs
    _write(metadata_csv, "dicom_id,subject_id,study_id,ViewPosition", "a,10000032,50414267,PA", "b,p1000,50414267,PA")
    with pytest.raises(
        DataError, match=r"mimic-cxr-2.0.0-metadata.csv row 3, column 'subject_id': 'p1000' is not a numeric id"
    ):
        read_mimic(label_csv, metadata_csv=metadata_csv, image_root=tmp_path)


def test_read_table_dispatch(generic_csv):
    assert detect_format(generic_csv) == "csv"
    assert read_table(generic_csv).classes == ["Pneumonia", "Effusion"]
    assert read_table(generic_csv, format="csv", classes=["Effusion"]).classes == ["Effusion"]
    assert set(READERS) == {"csv", "chexpert", "nih", "mimic"}
    with pytest.raises(ConfigError, match="unknown format 'parquet'"):
        read_table(generic_csv, format="parquet")


@pytest.mark.parametrize("format", ["csv", "chexpert", "nih", "mimic"])
def test_every_reader_takes_the_shared_keywords(format, generic_csv, mimic_csvs, tmp_path):
    """read_table passes image_root, uncertainty, classes and metadata_csv to every registered reader alike."""
    label_csv, metadata_csv = mimic_csvs
    sources = {
        "csv": (generic_csv, ["Effusion"], None),
        "chexpert": (_write(tmp_path / "train.csv", "Path,Frontal/Lateral,Edema", "CheXpert/patient00001/a.jpg,F,-1"),
                     ["Edema"], None),
        "nih": (_write(tmp_path / "Data_Entry.csv", "Image Index,Finding Labels,Patient ID", "a.png,Mass,1"),
                ["Mass"], None),
        "mimic": (label_csv, ["Pneumonia"], metadata_csv),
    }
    csv_path, classes, metadata = sources[format]
    table = read_table(csv_path, format, image_root=tmp_path, uncertainty="ones", classes=classes,
                       metadata_csv=metadata)
    assert table.classes == classes and len(table) >= 1


def test_metadata_csv_is_refused_where_it_does_not_apply_and_required_for_mimic(generic_csv, mimic_csvs):
    """No silent drop: metadata_csv given to a non-mimic reader, or missing for mimic, is a one-line ConfigError."""
    with pytest.raises(ConfigError, match="metadata_csv applies to the mimic format only, not to 'csv'"):
        read_table(generic_csv, "csv", metadata_csv=mimic_csvs[1])
    with pytest.raises(ConfigError, match="the mimic format needs metadata_csv"):
        read_table(mimic_csvs[0], "mimic")


def test_a_registered_reader_is_used_by_read_table_and_auto_detection(generic_csv, monkeypatch):
    """register_reader adds a --format name and, with a detector, an auto-detected header (registry restored)."""
    monkeypatch.setattr(readers, "READERS", dict(READERS))
    monkeypatch.setattr(readers, "_DETECTORS", dict(readers._DETECTORS))
    calls = []

    @readers.register_reader("mine", detect=lambda columns: "Pneumonia" in columns)
    def read_mine(csv_path, *, image_root=None, uncertainty="ignore", classes=None, metadata_csv=None,
                  allow_outside_root=False):
        calls.append((uncertainty, classes))
        return read_csv_table(csv_path, image_root=image_root, uncertainty=uncertainty, classes=classes,
                              allow_outside_root=allow_outside_root)

    assert detect_format(generic_csv) == "mine"
    assert read_table(generic_csv, uncertainty="zeros", classes=["Effusion"]).classes == ["Effusion"]
    assert calls == [("zeros", ["Effusion"])]
