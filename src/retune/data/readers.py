"""CSV readers for generic, CheXpert, NIH ChestX-ray14 and MIMIC-CXR-JPG label tables.

Readers register with ``register_reader`` and all take the same keyword arguments (``image_root``, ``uncertainty``,
``classes``, ``metadata_csv``). Every reader validates the whole file first (columns, label values, image paths)
and returns an ``ImageTable``; problems raise a one-line ``DataError`` naming the file, spreadsheet row and column.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from retune.data.table import PATH_COLUMN, PATIENT_COLUMN, SITE_COLUMN, SITE_COLUMN_NAMES, ImageTable
from retune.errors import ConfigError, DataError, unknown_name
from retune.io_utils import MAX_TABLE_BYTES, regular_file_size

CHEXPERT_FINDINGS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
NIH_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NIH_NO_FINDING = "No Finding"

# What an uncertain (-1) label becomes under each policy; NaN is masked out of losses and metrics.
UNCERTAINTY_POLICIES = {"ignore": float("nan"), "ones": 1.0, "zeros": 0.0}

REPORT_COLUMN = "report"
_LABEL_TOKENS = frozenset({"1", "1.0", "0", "0.0", "-1", "-1.0", ""})
_UNCERTAIN = -1.0
# A column whose filled values are mostly label tokens is a label column: its other values (yes, 2, 0.5) are then
# refused naming their row, never a reason for the column to vanish.
_LABEL_COLUMN_SHARE = 0.5
# Paths that need os.path normalisation: ".", ".." or "" components, absolute, "~", drive letters, backslashes.
_NEEDS_NORMALISING = r"(?:^|/)\.{1,2}(?:/|$)|//|^/|^[A-Za-z]:|\\"
# Column names (lower-cased, spaces as underscores) never taken as labels when classes are inferred.
_METADATA_COLUMNS = frozenset(
    {
        "image_index", "image_id", "dicom_id", "study_id", "subject_id", "source", "site", "split", "fold",
        "age", "patient_age", "sex", "gender", "patient_gender", "view", "view_position",
        "viewposition", "ap/pa", "frontal/lateral", "finding_labels", "follow-up_#",
    }
)


class Reader(Protocol):
    """A label-table reader: every one takes the same keyword arguments (those it has no use for must be None)."""

    def __call__(
        self,
        csv_path: str | Path,
        *,
        image_root: str | Path | None = None,
        uncertainty: str = "ignore",
        classes: list[str] | None = None,
        metadata_csv: str | Path | None = None,
        allow_outside_root: bool = False,
    ) -> ImageTable: ...


READERS: dict[str, Reader] = {}
_DETECTORS: dict[str, Callable[[set[str]], bool]] = {}


NO_LABELS = "no_label_column"  # ImageTable.extra key: why a table without label columns cannot be trained on


def register_reader(name: str, detect: Callable[[set[str]], bool] | None = None) -> Callable[[Reader], Reader]:
    """Register a reader under ``name`` (``--format NAME``); ``detect(header columns)`` lets ``auto`` pick it."""

    def decorator(reader: Reader) -> Reader:
        READERS[name] = reader
        if detect is not None:
            _DETECTORS[name] = detect
        return reader

    return decorator


@register_reader("csv")
def read_csv_table(
    csv_path: str | Path,
    *,
    image_root: str | Path | None = None,
    uncertainty: str = "ignore",
    classes: list[str] | None = None,
    metadata_csv: str | Path | None = None,
    path_column: str = "path",
    patient_column: str | None = "patient_id",
    report_column: str | None = None,
    allow_outside_root: bool = False,
) -> ImageTable:
    """Read a generic CSV of image paths, optional patient ids, 1/0/-1/blank labels and an optional report.

    Paths resolve against ``image_root`` (default: the CSV's folder). Without ``classes``, labels are
    the non-metadata columns whose non-blank values are all 1, 0 or -1. A missing patient column
    makes each image its own patient and sets ``extra["patient_column_missing"]``. ``report_column``
    defaults to a ``report`` column when there is one; a ``site`` (else ``source``) column becomes each row's
    site. Paths must stay inside the image root (absolute paths and symlinks included) unless ``allow_outside_root``.
    """
    csv_path = Path(csv_path)
    source = csv_path.name
    _no_metadata_csv(metadata_csv, "csv")
    uncertain_value = _uncertainty_value(uncertainty)
    raw = _read_csv(csv_path)
    _require_columns(raw, [path_column], source)
    if report_column is None and REPORT_COLUMN in raw.columns:
        report_column = REPORT_COLUMN
    elif report_column is not None:
        _require_columns(raw, [report_column], source)
    has_patients = patient_column is not None and patient_column in raw.columns
    blank_findings: list[str] = []
    no_labels = ""
    if classes is None:
        classes = _infer_label_columns(raw, exclude={path_column, patient_column, report_column})
        blank_findings = _blank_finding_columns(raw)
        if not classes:  # fine for embedding; what needs labels refuses it (``NO_LABELS`` names the problem)
            listed = f"; entirely blank: {', '.join(blank_findings)}" if blank_findings else ""
            no_labels = (
                f"{csv_path}: no label column (columns: {', '.join(raw.columns)}{listed}); a label column holds "
                "1, 0, -1 or blank for each image"
            )
    else:
        _require_columns(raw, classes, source, what="class column")
    _check_class_names(classes)

    root = _absolute(image_root or csv_path.parent)
    paths = _resolve_paths(raw[path_column], root, source, path_column, allow_outside_root)
    patients = _patient_ids(raw[patient_column], source, patient_column) if has_patients else paths
    labels = _parse_labels(raw, classes, uncertain_value, source)
    frame = _assemble(paths, patients, labels)
    if report_column is not None:
        frame[REPORT_COLUMN] = raw[report_column].to_numpy()
    site_column = next((name for name in SITE_COLUMN_NAMES if name in raw.columns and name not in classes), None)
    if site_column is not None:
        frame[SITE_COLUMN] = _site_names(raw[site_column], source, site_column).to_numpy()
    table = ImageTable(
        frame, list(classes), source=csv_path, image_root=root, confined_root=_confinement(root, allow_outside_root)
    )
    if not has_patients:
        table.extra["patient_column_missing"] = True
    if blank_findings:
        table.extra["unlabelled_columns"] = blank_findings
    if no_labels:
        table.extra[NO_LABELS] = no_labels
    return table


@register_reader("chexpert", detect=lambda columns: {"Path", "Frontal/Lateral"} <= columns)
def read_chexpert(
    csv_path: str | Path,
    *,
    image_root: str | Path | None = None,
    uncertainty: str = "ignore",
    classes: list[str] | None = None,
    metadata_csv: str | Path | None = None,
    allow_outside_root: bool = False,
) -> ImageTable:
    """Read a CheXpert ``train.csv``/``valid.csv``; the patient id is the ``patientNNNNN`` path component.

    Its paths start with ``CheXpert-v1.0-small/...``, so pass ``image_root`` as the folder that
    contains ``CheXpert-v1.0-small`` (default: the CSV's folder).
    """
    csv_path = Path(csv_path)
    source = csv_path.name
    _no_metadata_csv(metadata_csv, "chexpert")
    uncertain_value = _uncertainty_value(uncertainty)
    classes = list(classes or CHEXPERT_FINDINGS)
    _check_class_names(classes)
    raw = _read_csv(csv_path)
    _require_columns(raw, ["Path"], source)
    _require_columns(raw, classes, source, what="class column")

    root = _absolute(image_root or csv_path.parent)
    paths = _resolve_paths(raw["Path"], root, source, "Path", allow_outside_root)
    patients = raw["Path"].str.extract(r"(?:^|/)(patient\d+)(?:/|$)", expand=False)
    _raise_first_bad(patients.isna(), raw["Path"], source, "Path", "has no 'patientNNNNN' folder")
    labels = _parse_labels(raw, classes, uncertain_value, source)
    return ImageTable(_assemble(paths, patients, labels), classes, source=csv_path, image_root=root,
                      confined_root=_confinement(root, allow_outside_root))


@register_reader("nih", detect=lambda columns: {"Image Index", "Finding Labels"} <= columns)
def read_nih(
    csv_path: str | Path,
    *,
    image_root: str | Path | None = None,
    uncertainty: str = "ignore",
    classes: list[str] | None = None,
    metadata_csv: str | Path | None = None,
    allow_outside_root: bool = False,
) -> ImageTable:
    """Read NIH ChestX-ray14 ``Data_Entry_2017*.csv`` (``|``-joined ``Finding Labels``) as 0/1 labels.

    Images are ``image_root/<Image Index>``; the default root is ``images/`` beside the CSV if it
    exists, else the CSV's folder. ``classes`` may be any of ``NIH_FINDINGS`` and ``"No Finding"``.
    NIH labels are never uncertain, so every ``uncertainty`` policy reads them the same.
    """
    csv_path = Path(csv_path)
    source = csv_path.name
    _no_metadata_csv(metadata_csv, "nih")
    _uncertainty_value(uncertainty)
    known = (*NIH_FINDINGS, NIH_NO_FINDING)
    classes = list(classes or NIH_FINDINGS)
    for name in classes:
        if name not in known:
            raise unknown_name("NIH class", name, known)
    _check_class_names(classes)
    raw = _read_csv(csv_path)
    _require_columns(raw, ["Image Index", "Finding Labels", "Patient ID"], source)

    if image_root is None:
        image_root = csv_path.parent / "images" if (csv_path.parent / "images").is_dir() else csv_path.parent
    root = _absolute(image_root)
    paths = _resolve_paths(raw["Image Index"], root, source, "Image Index", allow_outside_root)
    patients = _patient_ids(raw["Patient ID"], source, "Patient ID")
    findings = raw["Finding Labels"].str.split("|").explode().str.strip()
    _raise_first_bad(
        ~findings.isin(known), findings, source, "Finding Labels",
        f"is not an NIH finding (known: {', '.join(known)})",
    )
    present = pd.crosstab(findings.index, findings).reindex(index=raw.index, columns=classes, fill_value=0)
    labels = {name: (present[name] > 0).to_numpy(dtype=np.float64) for name in classes}
    return ImageTable(_assemble(paths, patients, labels), classes, source=csv_path, image_root=root,
                      confined_root=_confinement(root, allow_outside_root))


@register_reader("mimic")
def read_mimic(
    csv_path: str | Path,
    *,
    image_root: str | Path | None = None,
    uncertainty: str = "ignore",
    classes: list[str] | None = None,
    metadata_csv: str | Path | None = None,
    views: Iterable[str] | None = None,
    allow_outside_root: bool = False,
) -> ImageTable:
    """Read MIMIC-CXR-JPG: ``mimic-cxr-2.0.0-chexpert.csv`` (or ``-negbio``) joined with ``-metadata.csv``.

    One row per metadata image whose (subject_id, study_id) has labels, optionally only ``views``
    (``ViewPosition``, e.g. ``("PA", "AP")``); images are
    ``image_root/files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg`` (default root: the label
    CSV's folder); patient = subject_id.
    """
    if metadata_csv is None:
        raise ConfigError(
            f"{Path(csv_path).name}: the mimic format needs metadata_csv (data.metadata_csv in the config, "
            "--metadata-csv on the command line): the mimic-cxr-2.0.0-metadata.csv that maps studies to images"
        )
    label_csv, metadata_csv = Path(csv_path), Path(metadata_csv)
    label_source, meta_source = label_csv.name, metadata_csv.name
    uncertain_value = _uncertainty_value(uncertainty)
    classes = list(classes or CHEXPERT_FINDINGS)
    _check_class_names(classes)
    views = tuple(views) if views is not None else None
    label_raw = _read_csv(label_csv)
    meta = _read_csv(metadata_csv)
    _require_columns(label_raw, ["subject_id", "study_id"], label_source)
    _require_columns(label_raw, classes, label_source, what="class column")
    _require_columns(meta, ["dicom_id", "subject_id", "study_id", *(["ViewPosition"] if views else [])], meta_source)

    for frame, source in ((label_raw, label_source), (meta, meta_source)):
        for column in ("subject_id", "study_id"):
            frame[column] = frame[column].str.strip()
            not_numeric = ~frame[column].str.fullmatch(r"\d+")
            _raise_first_bad(not_numeric, frame[column], source, column, "is not a numeric id")
    meta["dicom_id"] = meta["dicom_id"].str.strip()
    _raise_first_bad(
        ~meta["dicom_id"].str.fullmatch(r"[^/\\]+") | meta["dicom_id"].isin([".", ".."]),
        meta["dicom_id"],
        meta_source,
        "dicom_id",
        "is not a valid DICOM id",
    )
    keys = ["subject_id", "study_id"]
    _raise_first_bad(
        label_raw.duplicated(keys),
        label_raw["study_id"],
        label_source,
        "study_id",
        "repeats an earlier (subject_id, study_id) pair",
    )
    labels = pd.DataFrame(_parse_labels(label_raw, classes, uncertain_value, label_source), index=label_raw.index)
    labels[keys] = label_raw[keys]

    if views is not None:
        meta = meta[meta["ViewPosition"].str.strip().isin(views)]
    joined = meta.join(labels.set_index(keys), on=keys, how="inner")  # keeps metadata row numbers
    if joined.empty:
        view_note = f" with ViewPosition in {list(views)}" if views is not None else ""
        raise DataError(f"{meta_source}: no images{view_note} have labels in {label_source}")

    subject, study = joined["subject_id"], joined["study_id"]
    relative = "files/p" + subject.str[:2] + "/p" + subject + "/s" + study + "/" + joined["dicom_id"] + ".jpg"
    root = _absolute(image_root or label_csv.parent)
    paths = _resolve_paths(relative, root, meta_source, "dicom_id", allow_outside_root)
    table = ImageTable(
        _assemble(paths, subject, {name: joined[name].to_numpy() for name in classes}),
        classes,
        source=label_csv,
        image_root=root,
        confined_root=_confinement(root, allow_outside_root),
    )
    table.extra["unlabelled_images_dropped"] = int(len(meta) - len(joined))
    return table


def detect_format(csv_path: str | Path) -> str:
    """Guess the reader from the header: the first registered reader whose detector accepts it, else ``csv``."""
    columns = set(_read_csv(Path(csv_path), header_only=True).columns)
    return next((name for name, detect in _DETECTORS.items() if detect(columns)), "csv")


def read_table(
    path: str | Path,
    format: str = "auto",
    *,
    image_root: str | Path | None = None,
    uncertainty: str = "ignore",
    classes: list[str] | None = None,
    metadata_csv: str | Path | None = None,
    allow_outside_root: bool = False,
) -> ImageTable:
    """Read a label table with the named reader (``READERS``), or the one ``detect_format`` picks."""
    if format == "auto":
        format = detect_format(path)
    if format not in READERS:
        raise unknown_name("format", format, [*READERS, "auto"])
    options = {"image_root": image_root, "uncertainty": uncertainty, "classes": classes, "metadata_csv": metadata_csv,
               "allow_outside_root": allow_outside_root}
    return READERS[format](path, **options)


def missing_images_hint(table: ImageTable) -> str:
    """When no image path of ``table`` exists on disk, why and what to do (``""`` otherwise): appended to "no readable
    image" errors, whose usual cause is paths relative to another folder than the one they were resolved against."""
    paths = table.paths
    if not paths or any(os.path.exists(path) for path in paths):
        return ""
    root = f" (resolved against {table.image_root})" if table.image_root else ""
    return (
        f"; none of the {len(paths)} image paths exist: the first resolves to {paths[0]}{root}; "
        "pass --image-root with the folder the CSV's paths are relative to"
    )


def _no_metadata_csv(metadata_csv: str | Path | None, format: str) -> None:
    if metadata_csv is not None:
        raise ConfigError(f"metadata_csv applies to the mimic format only, not to '{format}'")


def _read_csv(path: Path, header_only: bool = False) -> pd.DataFrame:
    """Read every cell as a string with blanks kept as ``""``; a missing, special (FIFO, device), oversized,
    unparsable or empty file, or a header naming a column twice, is a DataError."""
    if not Path(path).exists():
        raise DataError(f"{path}: file not found")
    regular_file_size(path, MAX_TABLE_BYTES, "CSV file")
    try:
        header = pd.read_csv(path, dtype=str, header=None, nrows=1, keep_default_na=False).iloc[0]
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, nrows=0 if header_only else None)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path.name}: empty CSV (no header row)") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot read CSV ({reason})") from exc
    if len(header) == len(frame.columns):  # the names as written (pandas renames a repeated "X" to "X.1")
        frame.columns = [str(name).strip() or str(column) for name, column in zip(header, frame.columns)]
    frame.columns = [str(column).strip() for column in frame.columns]
    repeated = next((name for name in frame.columns if list(frame.columns).count(name) > 1), None)
    if repeated is not None:
        raise DataError(f"{path}: column '{repeated}' appears more than once in the header; keep one")
    if not header_only and frame.empty:
        raise DataError(f"{path.name}: CSV has a header but no data rows")
    return frame


def _require_columns(frame: pd.DataFrame, columns: Iterable[str], source: str, what: str = "column") -> None:
    """Raise ``<file>: missing column 'X' (columns: ...)`` for the first absent column."""
    for column in columns:
        if column not in frame.columns:
            raise DataError(f"{source}: missing {what} '{column}' (columns: {', '.join(frame.columns)})")


def _check_class_names(classes: list[str]) -> None:
    """Class names must be unique and must not clash with the table's own columns."""
    reserved = {PATH_COLUMN, PATIENT_COLUMN, REPORT_COLUMN, SITE_COLUMN}
    seen: set[str] = set()
    for name in classes:
        if name in seen:
            raise ConfigError(f"class '{name}' is listed twice")
        if name in reserved:
            raise ConfigError(f"class name '{name}' clashes with the table column of that name")
        seen.add(name)


def _uncertainty_value(policy: str) -> float:
    """The value an uncertain (-1) label takes under ``policy``."""
    if policy not in UNCERTAINTY_POLICIES:
        raise unknown_name("uncertainty policy", policy, list(UNCERTAINTY_POLICIES))
    return UNCERTAINTY_POLICIES[policy]


def _infer_label_columns(raw: pd.DataFrame, exclude: set[str | None]) -> list[str]:
    """Label columns (bar ``exclude`` and known metadata): a known finding's name, or mostly 1/0/-1/blank values.

    A stray bad value (``2``, ``yes``) must not make a finding silently vanish: such a column is still a
    label column, and ``_parse_labels`` then rejects the value naming its row.
    """
    known = {_column_key(name) for name in (*CHEXPERT_FINDINGS, *NIH_FINDINGS, NIH_NO_FINDING)}
    classes = []
    for column in raw.columns:
        key = _column_key(column)
        if column in exclude or key in _METADATA_COLUMNS:
            continue
        values = raw[column].str.strip()
        filled = values[values != ""]
        if len(filled) and (key in known or filled.isin(_LABEL_TOKENS).mean() >= _LABEL_COLUMN_SHARE):
            classes.append(column)
    return classes


def _blank_finding_columns(raw: pd.DataFrame) -> list[str]:
    """Columns named after a known finding whose every value is blank: not labelled, so listed, never trained."""
    known = {_column_key(name) for name in (*CHEXPERT_FINDINGS, *NIH_FINDINGS, NIH_NO_FINDING)}
    return [column for column in raw.columns if _column_key(column) in known and (raw[column].str.strip() == "").all()]


def _column_key(name: str) -> str:
    return name.lower().replace(" ", "_")


def _parse_labels(raw: pd.DataFrame, classes: list[str], uncertain_value: float, source: str) -> dict[str, np.ndarray]:
    """Map 1/0/-1/blank (also 1.0/0.0/-1.0) to floats: blank -> NaN, -1 -> ``uncertain_value``."""
    labels = {}
    for name in classes:
        values = raw[name].str.strip()
        _raise_first_bad(~values.isin(_LABEL_TOKENS), values, source, name, "is not a label (use 1, 0, -1 or blank)")
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, copy=True)  # blank -> NaN
        numbers[numbers == _UNCERTAIN] = uncertain_value
        labels[name] = numbers
    return labels


def _resolve_paths(
    raw_paths: pd.Series, root: Path, source: str, column: str, allow_outside_root: bool = False
) -> pd.Series:
    """Join relative paths onto ``root`` (normalised); absolute paths stay. A path that escapes ``root`` (``..``
    or an absolute path elsewhere) is an error unless ``allow_outside_root``."""
    values = raw_paths.str.strip()
    _raise_first_bad(values == "", values, source, column, "is blank; an image path is required")
    _raise_first_bad(values.str.contains("\0", regex=False), values.str.replace("\0", "\\0", regex=False), source,
                     column, "holds a NUL byte; no file can have that name")
    root_text = str(root)
    prefix = root_text.rstrip(os.sep) + os.sep
    resolved = prefix + values  # plain relative paths ("a/b.png") need nothing more
    unusual = values[values.str.contains(_NEEDS_NORMALISING, regex=True)]
    if len(unusual):
        normalised = pd.Series(
            [os.path.normpath(os.path.join(root_text, value)) for value in unusual], index=unusual.index
        )
        outside = normalised[~normalised.str.startswith(prefix)]
        # an absolute path may name the root through a symlink: compare real locations too
        escapes = unusual.index.isin(outside.index[~outside.map(os.path.realpath).str.startswith(prefix)])
        if not allow_outside_root:
            _raise_first_bad(escapes, unusual, source, column,
                             f"escapes the image root {root} (pass --allow-outside-root to read such paths)")
        resolved[unusual.index] = normalised
    return resolved


def _site_names(raw_sites: pd.Series, source: str, column: str) -> pd.Series:
    """Stripped site names; a blank one is an error (a row of unknown site cannot be broken down by site)."""
    values = raw_sites.str.strip()
    _raise_first_bad(values == "", values, source, column, "is blank; with a site column every row needs its site")
    return values


def _patient_ids(raw_ids: pd.Series, source: str, column: str) -> pd.Series:
    """Stripped patient ids; a blank one is an error."""
    values = raw_ids.str.strip()
    _raise_first_bad(values == "", values, source, column, "is blank; a patient id is required")
    return values


def _raise_first_bad(bad: pd.Series | np.ndarray, values: pd.Series, source: str, column: str, problem: str) -> None:
    """Raise ``<file> row N, column 'C': 'value' <problem>`` for the first flagged row (row 1 is the header)."""
    bad = np.asarray(bad, dtype=bool)
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        row = int(values.index[position]) + 2
        raise DataError(f"{source} row {row}, column '{column}': '{values.iloc[position]}' {problem}")


def _assemble(paths: pd.Series, patients: pd.Series, labels: dict[str, np.ndarray]) -> pd.DataFrame:
    """The ImageTable frame: image_path, patient_id, then one float column per class."""
    return pd.DataFrame({PATH_COLUMN: paths.to_numpy(), PATIENT_COLUMN: patients.to_numpy(), **labels})


def _confinement(root: Path, allow_outside_root: bool) -> Path | None:
    """The folder images must really lie in (symlinks followed when they are read), or None when not confined."""
    return None if allow_outside_root else root


def _absolute(path: str | Path) -> Path:
    """``path`` made absolute (user-expanded, symlinks resolved) so escape checks compare like with like."""
    return Path(path).expanduser().resolve()
