"""Readers for published medical VQA sets (VQA-RAD, SLAKE) into the question-table format of ``data.questions``.

VQA-RAD (Lau et al. 2018) ships one JSON list of records (``qid``, ``image_name``, ``question``, ``answer``,
``answer_type``, ``phrase_type``...) beside ``VQA_RAD Image Folder``; SLAKE (Liu et al. 2021) ships
``train.json`` / ``validate.json`` / ``test.json`` (``qid``, ``img_name``, ``question``, ``answer``, ``q_lang``,
``answer_type``...) beside ``imgs/``. Yes/no answers become yes/no questions; other answers are asked with the
file's answer vocabulary as candidates. Neither set names patients: each image counts as its own patient.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from retune.data.questions import CANDIDATE_SEPARATOR, COLUMNS, NO, OPEN, YES, YES_NO, check_questions
from retune.data.splits import patient_split
from retune.errors import DataError

VQA_RAD_FIELDS = ("qid", "image_name", "question", "answer", "answer_type")
SLAKE_FIELDS = ("qid", "img_name", "question", "answer", "answer_type")
SLAKE_SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}


def _records(path: Path, fields: tuple[str, ...]) -> list[dict]:
    """The JSON list of records, each checked for ``fields`` (one line naming file and record otherwise)."""
    try:
        records = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot be read ({error})") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of question records, found {type(records).__name__}")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{path}: record {index}: not a JSON object")
        missing = [name for name in fields if record.get(name) in (None, "")]
        if missing:
            raise DataError(f"{path}: record {index} (qid {record.get('qid', '?')}): missing field(s) "
                            f"{', '.join(missing)}")
    return records


def _answer(value: object) -> str:
    return " ".join(str(value).strip().lower().split()).replace(CANDIDATE_SEPARATOR, "/")


def _question_frame(path: Path, records: list[dict], image_field: str, image_folder: Path, splits: list[str],
                    source: str, include_open: bool) -> pd.DataFrame:
    """Rows of the question table for checked records; images must exist in ``image_folder``."""
    answers = [_answer(record["answer"]) for record in records]
    vocabulary = sorted({answer for answer in answers if answer not in (YES, NO)})
    rows = []
    for index, (record, answer, split) in enumerate(zip(records, answers, splits)):
        yes_no = answer in (YES, NO)
        if not yes_no and not include_open:
            continue
        image = image_folder / str(record[image_field])
        if not image.is_file():
            raise DataError(f"{path}: record {index} (qid {record['qid']}): image {image} not found")
        rows.append({
            "question_id": f"{source}-{record['qid']}",
            "image_path": str(image.resolve()),
            "patient_id": str(record[image_field]),
            "split": split,
            "type": YES_NO if yes_no else OPEN,
            "finding": str(record.get("question_type") or record.get("content_type") or ""),
            "phrasing": -1,
            "question": " ".join(str(record["question"]).split()),
            "answer": answer,
            "candidates": CANDIDATE_SEPARATOR.join([YES, NO] if yes_no else vocabulary),
            "pair_id": "",
            "role": answer if yes_no else OPEN,
            "unseen_phrasing": False,
            "unseen_finding": False,
            "source": source,
        })
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    check_questions(frame, str(path))
    return frame


def read_vqa_rad(path: str | Path, image_folder: str | Path | None = None, include_open: bool = True,
                 seed: int = 0) -> pd.DataFrame:
    """VQA-RAD's JSON as a question table: its test phrasings (``phrase_type`` test_*) are the test split, the rest
    is split 90/10 by image into train and val."""
    path = Path(path)
    records = _records(path, VQA_RAD_FIELDS)
    folder = Path(image_folder) if image_folder else path.parent / "VQA_RAD Image Folder"
    is_test = np.array([str(record.get("phrase_type", "")).startswith("test") for record in records])
    images = np.array([str(record["image_name"]) for record in records])
    splits = np.full(len(records), "test", dtype=object)
    rest = np.flatnonzero(~is_test)
    for name, rows in patient_split(images[rest], (0.9, 0.1, 0.0), seed).items():
        splits[rest[rows]] = name
    return _question_frame(path, records, "image_name", folder, list(splits), "vqa-rad", include_open)


def read_slake(path: str | Path, image_folder: str | Path | None = None, include_open: bool = True,
               split: str | None = None) -> pd.DataFrame:
    """One SLAKE file (English questions only) as a question table; the split is named by the file (train.json,
    validate.json, test.json) unless given."""
    path = Path(path)
    records = [record for record in _records(path, SLAKE_FIELDS) if record.get("q_lang", "en") == "en"]
    split = split or SLAKE_SPLITS.get(path.stem)
    if split not in SLAKE_SPLITS.values():
        raise DataError(f"{path}: cannot tell the split from the file name; pass split= train, val or test")
    folder = Path(image_folder) if image_folder else path.parent / "imgs"
    return _question_frame(path, records, "img_name", folder, [split] * len(records), "slake", include_open)
