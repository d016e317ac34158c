"""Image-text pairs for the objectives, each labelled as what it is.

- ``labels``: SYNTHETIC text. Sentences written by templates from an image's positive labels (NIH ChestX-ray14 has
  no reports), in several phrasings; training images draw a phrasing, evaluation images always get the first, and
  images with the same label set are positives of each other whatever the phrasing.
- ``csv``: real text from a column of the data CSV (cxr-seg's ``clinical_notes``, a user's ``path, text`` pairs);
  images with the same text are positives of each other.
- text-only texts (Open-i reports) for the unimodal objective's text terms.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from retune.config import DataConfig
from retune.data.readers import read_csv_table
from retune.data.reports import iter_openi_archive, reports_table
from retune.data.table import ImageTable
from retune.errors import DataError
from retune.objectives.config import PairsConfig
from retune.prompts import finding_phrase, normalise_class_name

SYNTHETIC_NOTE = (
    "texts are SYNTHETIC: sentences written by templates from the label columns, not radiology reports"
)
POSITIVE_TEMPLATES = ("{Finding}.", "There is {finding}.", "Findings consistent with {finding}.", "{Finding} is seen.")
NORMAL_SENTENCES = (
    "No acute cardiopulmonary abnormality.",
    "The lungs are clear.",
    "No active disease in the chest.",
    "Normal chest radiograph.",
)


def templated_sentence(positives: list[str], phrasing: int) -> str:
    """One synthetic report sentence naming the positive findings in phrasing ``phrasing`` (a normal sentence when
    there are none)."""
    if not positives:
        return NORMAL_SENTENCES[phrasing]
    template = POSITIVE_TEMPLATES[phrasing]
    return " ".join(
        template.format(finding=phrase, Finding=phrase[:1].upper() + phrase[1:])
        for phrase in (finding_phrase(name) for name in positives)
    )


@dataclass
class PairTexts:
    """Each row's text and positive group, where the texts came from, and what to say about them."""

    texts: list[str]
    groups: np.ndarray
    source: str
    note: str


def label_pair_texts(table: ImageTable, phrasings: int, train_rows: np.ndarray, seed: int) -> PairTexts:
    """Templated sentences from the label columns (``No Finding`` and unlabelled classes name nothing); training rows
    draw one of the first ``phrasings`` phrasings, every other row gets phrasing 0."""
    classes = [name for name in table.classes if normalise_class_name(name) != "no finding"]
    labels = table.labels(classes) == 1.0  # NaN (unlabelled) is not positive
    drawn = np.zeros(len(table), dtype=int)
    drawn[train_rows] = np.random.default_rng(seed).integers(0, phrasings, len(train_rows))
    positives = [[name for name, on in zip(classes, row) if on] for row in labels]
    texts = [templated_sentence(found, int(k)) for found, k in zip(positives, drawn)]
    _, groups = np.unique(np.asarray(["|".join(found) for found in positives], dtype=object), return_inverse=True)
    return PairTexts(texts, groups.reshape(-1), "labels (synthetic)", SYNTHETIC_NOTE)


def read_pair_csv(data: DataConfig, pairs: PairsConfig) -> tuple[ImageTable, int]:
    """The data CSV's images with their texts (``report`` column) and the number of rows left out for an empty text.

    A missing image file, or an empty text under ``empty_text: error``, is one DataError naming the row.
    """
    if data.csv is None:
        raise DataError("data.csv: a pairs CSV is required for pairs.source 'csv'")
    table = read_csv_table(
        data.csv,
        image_root=data.image_root,
        report_column=pairs.text_column,
        allow_outside_root=data.allow_outside_root,
        classes=data.classes,
    )
    name = Path(data.csv).name
    missing = [row for row, path in enumerate(table.paths) if not Path(path).is_file()]
    if missing:
        raise DataError(f"{name} row {missing[0] + 2}, column 'path': image {table.paths[missing[0]]} not found")
    texts = table.frame["report"].map(lambda value: value.strip() if isinstance(value, str) else "")
    empty = np.flatnonzero(texts.to_numpy() == "")
    if len(empty) and pairs.empty_text == "error":
        raise DataError(f"{name} row {empty[0] + 2}, column '{pairs.text_column}': empty text")
    table.frame["report"] = texts
    kept = np.setdiff1d(np.arange(len(table)), empty)
    return (table.subset(kept) if len(empty) else table), int(len(empty))


def csv_pair_texts(table: ImageTable, column: str) -> PairTexts:
    """Each row's real text; identical texts share a group."""
    texts = [str(text) for text in table.frame["report"]]
    _, groups = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    return PairTexts(texts, groups.reshape(-1), f"csv column '{column}' (real text)", "")


def text_only_texts(path: str | Path, limit: int | None = None) -> list[str]:
    """Texts without images: an Open-i ``.tgz`` (findings + impression of each report) or a CSV's ``text`` column;
    reports without findings or impression are skipped (unparseable members are warned about once)."""
    path = Path(path)
    if path.name.endswith((".tgz", ".tar.gz")):
        errors: list[str] = []
        texts = reports_table(iter_openi_archive(path, errors))["text"].dropna().tolist()
        if errors:
            warnings.warn(f"{len(errors)} report(s) of {path} could not be read; first: {errors[0]}", stacklevel=2)
    else:
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (OSError, pd.errors.ParserError) as error:
            raise DataError(f"{path}: cannot read text CSV ({error})") from None
        if "text" not in frame.columns:
            raise DataError(f"{path}: missing column 'text' (columns: {', '.join(frame.columns)})")
        texts = [text.strip() for text in frame["text"] if text.strip()]
    if not texts:
        raise DataError(f"{path}: no texts found")
    return texts[:limit] if limit else texts
