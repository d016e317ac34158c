"""Closed-ended question sets built from classification labels (ProbMed-style), and the question-table format.

Every labelled CSV becomes yes/no questions per image and finding, from several phrasings and synonyms, balanced
yes/no per finding; each "yes" is paired with an adversarial "no" about a finding absent from the same image
(ProbMed, arXiv 2405.20421), and a multiple-choice type asks which of three findings is present (or none). Images
are split by patient (``data.splits``); some phrasings and findings are held out of training entirely, so a model can
be scored on wording and findings it never saw. The table is a plain Parquet file (``qa.parquet``) pandas reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from retune.config import SplitConfig, StrictModel
from retune.data.splits import patient_split
from retune.data.table import PATH_COLUMN, PATIENT_COLUMN, ImageTable
from retune.errors import ConfigError, DataError
from retune.io_utils import atomic_path

YES, NO, NONE = "yes", "no", "none"
YES_NO, CHOICE, OPEN = "yes_no", "choice", "open"
CANDIDATE_SEPARATOR = "|"
MAX_QUESTION_CHARS = 1000

PHRASINGS: tuple[str, ...] = (
    "Is there {finding}?",
    "Does this chest X-ray show {finding}?",
    "Any sign of {finding}?",
    "Is {finding} present in this image?",
    "Can you see {finding} on this radiograph?",
    "Does the patient have {finding}?",
    "Is there evidence of {finding}?",
    "Would you report {finding} on this film?",
)
CHOICE_PHRASING = "Which of these is present: {options}, or none?"

# Surface forms per finding (NIH ChestX-ray14 and CheXpert names); other classes are spoken as their column name.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("atelectasis", "collapsed lung tissue", "partial lung collapse"),
    "Cardiomegaly": ("cardiomegaly", "an enlarged heart", "a big heart"),
    "Effusion": ("pleural effusion", "fluid around the lung", "an effusion"),
    "Pleural Effusion": ("pleural effusion", "fluid around the lung", "an effusion"),
    "Infiltration": ("infiltration", "an infiltrate", "lung infiltrates"),
    "Mass": ("a mass", "a lung mass", "a large lesion"),
    "Nodule": ("a nodule", "a lung nodule", "a small round lesion"),
    "Pneumonia": ("pneumonia", "a lung infection", "infectious consolidation"),
    "Pneumothorax": ("pneumothorax", "a collapsed lung", "air around the lung"),
    "Consolidation": ("consolidation", "airspace consolidation", "a consolidated lung"),
    "Edema": ("edema", "pulmonary edema", "fluid in the lungs"),
    "Emphysema": ("emphysema", "hyperinflated lungs", "emphysematous change"),
    "Fibrosis": ("fibrosis", "lung scarring", "pulmonary fibrosis"),
    "Pleural_Thickening": ("pleural thickening", "a thickened pleura", "pleural scarring"),
    "Hernia": ("a hernia", "a hiatal hernia", "a diaphragmatic hernia"),
    "Opacity": ("an opacity", "a lung opacity", "an area of increased density"),
    "Lung Opacity": ("an opacity", "a lung opacity", "an area of increased density"),
}
NO_FINDING_NAMES = frozenset({"no finding", "no_finding", "nofinding", "normal"})

COLUMNS = (
    "question_id", "image_path", "patient_id", "split", "type", "finding", "phrasing", "question", "answer",
    "candidates", "pair_id", "role", "unseen_phrasing", "unseen_finding", "source",
)


class QuestionSetConfig(StrictModel):
    """How questions are built from a labelled table: phrasings, held-out parts, multiple choice, patient split."""

    held_out_phrasings: list[int] = Field(
        default_factory=lambda: [6, 7],
        description=f"Indices into the {len(PHRASINGS)} phrasings kept out of training (asked on val/test only).",
    )
    held_out_findings: list[str] | None = Field(
        None,
        description="Findings never asked in training; default: the finding with the median positive count.",
    )
    choice_fraction: float = Field(0.5, ge=0, le=1, description="Share of images that get a multiple-choice question.")
    split: SplitConfig = SplitConfig()
    seed: int = Field(0, ge=0)

    @field_validator("held_out_phrasings")
    @classmethod
    def _valid_phrasings(cls, value: list[int]) -> list[int]:
        if any(not 0 <= index < len(PHRASINGS) for index in value):
            raise ValueError(f"phrasing indices must be in 0..{len(PHRASINGS) - 1}, got {value}")
        if len(set(value)) >= len(PHRASINGS) - 1:
            raise ValueError("at least two phrasings must stay in training")
        return sorted(set(value))


def surface_forms(finding: str) -> tuple[str, ...]:
    """The ways a question may name ``finding`` (its synonyms, or its column name in words)."""
    return SYNONYMS.get(finding, (finding.replace("_", " ").lower(),))


def question_findings(classes: list[str]) -> list[str]:
    """The classes questions are asked about: every class but 'No Finding' and its spellings."""
    return [name for name in classes if name.strip().lower() not in NO_FINDING_NAMES]


def _default_held_out(labels: np.ndarray, findings: list[str]) -> list[str]:
    positives = np.nansum(labels == 1, axis=0)
    order = np.argsort(positives, kind="stable")
    return [findings[int(order[len(order) // 2])]] if len(findings) >= 3 else []


class _Builder:
    """Accumulates question rows for one table (seeded)."""

    def __init__(self, table: ImageTable, findings: list[str], config: QuestionSetConfig) -> None:
        self.table, self.findings, self.config = table, findings, config
        self.rng = np.random.default_rng(config.seed)
        self.rows: list[dict] = []
        self.training_phrasings = [i for i in range(len(PHRASINGS)) if i not in config.held_out_phrasings]

    def yes_no(self, row: int, split: str, finding: str, answer: str, role: str, pair: str, unseen: bool) -> None:
        phrasings = range(len(PHRASINGS)) if split != "train" else self.training_phrasings
        phrasing = int(self.rng.choice(list(phrasings)))
        form = str(self.rng.choice(surface_forms(finding)))
        self._add(row, split, YES_NO, finding, phrasing, PHRASINGS[phrasing].format(finding=form), answer,
                  [YES, NO], pair, role, unseen)

    def choice(self, row: int, split: str, options: list[str], answer: str, unseen: bool) -> None:
        forms = [str(self.rng.choice(surface_forms(option))) for option in options]
        text = CHOICE_PHRASING.format(options=", ".join(forms))
        answer_form = forms[options.index(answer)] if answer in options else NONE
        self._add(row, split, CHOICE, CANDIDATE_SEPARATOR.join(options), -1, text, answer_form, [*forms, NONE], "",
                  "choice", unseen)

    def _add(self, row: int, split: str, kind: str, finding: str, phrasing: int, question: str, answer: str,
             candidates: list[str], pair: str, role: str, unseen_finding: bool) -> None:
        frame = self.table.frame
        self.rows.append({
            "question_id": f"q{len(self.rows):06d}",
            "image_path": frame[PATH_COLUMN].iat[row],
            "patient_id": str(frame[PATIENT_COLUMN].iat[row]),
            "split": split,
            "type": kind,
            "finding": finding,
            "phrasing": phrasing,
            "question": question,
            "answer": answer,
            "candidates": CANDIDATE_SEPARATOR.join(candidates),
            "pair_id": pair,
            "role": role,
            "unseen_phrasing": phrasing in self.config.held_out_phrasings,
            "unseen_finding": unseen_finding,
            "source": "labels",
        })


def build_questions(table: ImageTable, config: QuestionSetConfig | None = None) -> pd.DataFrame:
    """Question table (``COLUMNS``) for a labelled table: balanced yes/no with adversarial pairs, multiple choice;
    ``frame.attrs["held_out_findings"]`` names the findings kept out of training."""
    config = config or QuestionSetConfig()
    findings = question_findings(list(table.classes))
    if len(findings) < 2:
        raise DataError(f"{table.source}: questions need at least two finding columns, found {findings}")
    labels = table.labels(findings)
    held_out = config.held_out_findings if config.held_out_findings is not None else _default_held_out(
        labels, findings)
    unknown = [name for name in held_out if name not in findings]
    if unknown:
        raise ConfigError(f"held_out_findings: {unknown} are not finding columns of {table.source} ({findings})")
    if len(held_out) >= len(findings) - 1:
        raise ConfigError(f"held_out_findings: {held_out} leaves fewer than two findings to train on")
    splits = patient_split(table.patients, config.split.fractions, config.split.seed)
    builder = _Builder(table, findings, config)
    for split, rows in splits.items():
        asked = findings if split != "train" else [f for f in findings if f not in held_out]
        _yes_no_questions(builder, labels, rows, split, findings, asked, held_out)
        _choice_questions(builder, labels, rows, split, findings, asked, held_out)
    frame = pd.DataFrame(builder.rows, columns=list(COLUMNS))
    frame = frame.astype({"phrasing": "int64", "unseen_phrasing": bool, "unseen_finding": bool})
    frame.attrs["held_out_findings"] = list(held_out)
    return frame


def _yes_no_questions(builder: _Builder, labels: np.ndarray, rows: np.ndarray, split: str, findings: list[str],
                      asked: list[str], held_out: list[str]) -> None:
    """A "yes" per positive (image, finding) paired with an adversarial "no" on the same image, the absent finding
    chosen where "no" answers are scarcest (then moved off findings with too many, or the pair dropped where its
    "yes" finding is over-asked); plain "no" questions fill the rest, so each finding is balanced where its negatives
    allow."""
    column = {name: findings.index(name) for name in asked}
    yes_needed = {name: int(np.sum(labels[rows, column[name]] == 1)) for name in asked}
    no_given = dict.fromkeys(asked, 0)
    positives = [(row, name) for row in rows for name in asked if labels[row, column[name]] == 1]
    pairs: list[list] = []  # [row, finding, absent finding, absent findings of the image]
    for index in builder.rng.permutation(len(positives)):
        row, name = positives[index]
        absent = [other for other in asked if labels[row, column[other]] == 0]
        if not absent:
            continue
        deficit = np.array([yes_needed[other] - no_given[other] for other in absent], dtype=float)
        other = absent[int(np.argmax(deficit + builder.rng.random(len(absent)) * 0.5))]  # random tie-break
        pairs.append([row, name, other, absent])
        no_given[other] += 1
    for pair in pairs:  # repair: an adversarial "no" on an over-asked finding moves to one still short, if absent
        if no_given[pair[2]] > yes_needed[pair[2]]:
            short = [other for other in pair[3] if no_given[other] < yes_needed[other]]
            if short:
                no_given[pair[2]] -= 1
                pair[2] = short[0]
                no_given[pair[2]] += 1
    kept = []
    for pair in pairs:  # a pair whose "no" is still over-asked is dropped when its "yes" finding has "no"s to spare
        row, name, other, _ = pair
        if no_given[other] > yes_needed[other] and no_given[name] < yes_needed[name]:
            no_given[other] -= 1
            yes_needed[name] -= 1
        else:
            kept.append(pair)
    for row, name, other, _ in kept:
        pair_id = f"{split}-{row}-{name}"
        builder.yes_no(row, split, name, YES, "yes", pair_id, name in held_out)
        builder.yes_no(row, split, other, NO, "adversarial_no", pair_id, other in held_out)
    for name in asked:
        negatives = rows[labels[rows, column[name]] == 0]
        extra = min(max(yes_needed[name] - no_given[name], 0), len(negatives))
        for row in builder.rng.choice(negatives, size=extra, replace=False):
            builder.yes_no(int(row), split, name, NO, "no", "", name in held_out)


def _choice_questions(builder: _Builder, labels: np.ndarray, rows: np.ndarray, split: str, findings: list[str],
                      asked: list[str], held_out: list[str]) -> None:
    """"Which of these is present: A, B, C, or none?" with at most one present option (the answer) or none."""
    column = {name: findings.index(name) for name in asked}
    chosen = builder.rng.random(len(rows)) < builder.config.choice_fraction
    for row in rows[chosen]:
        present = [name for name in asked if labels[row, column[name]] == 1]
        absent = [name for name in asked if labels[row, column[name]] == 0]
        answer = str(builder.rng.choice(present)) if present and builder.rng.random() < 0.75 else None
        n_absent = 3 - (answer is not None)
        if len(absent) < n_absent:
            continue
        options = [str(name) for name in builder.rng.choice(absent, size=n_absent, replace=False)]
        if answer is not None:
            options.insert(int(builder.rng.integers(0, 3)), answer)
        builder.choice(int(row), split, options, answer or NONE, any(name in held_out for name in options))


# ---------------------------------------------------------------- the qa.parquet file


def write_questions(frame: pd.DataFrame, target: str | Path, facts: dict) -> Path:
    """Write the question table as Parquet (atomically), with ``facts`` (how it was built) in its metadata."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    metadata = {**(table.schema.metadata or {}), b"retune": json.dumps(facts, default=str).encode()}
    with atomic_path(target) as temp:
        pq.write_table(table.replace_schema_metadata(metadata), temp)
    return Path(target)


def question_facts(path: str | Path) -> dict:
    """The build facts stored in a question file's metadata ({} when it has none)."""
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata.get(b"retune", b"{}"))


def read_questions(path: str | Path) -> pd.DataFrame:
    """A question table, checked: every column present, no empty or over-long question, answers among candidates."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: question file not found")
    try:
        frame = pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a file that is not Parquet
        raise DataError(f"{path}: not a readable Parquet question file ({type(error).__name__})") from None
    missing = [name for name in COLUMNS if name not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    check_questions(frame, str(path))
    return frame


def check_questions(frame: pd.DataFrame, where: str) -> None:
    """One DataError naming the first row with an empty or over-long question or an answer outside its candidates."""
    for position, (qid, question, answer, candidates) in enumerate(
        frame[["question_id", "question", "answer", "candidates"]].itertuples(index=False)
    ):
        text = str(question).strip()
        if not text:
            raise DataError(f"{where}: row {position} ({qid}): empty question")
        if len(text) > MAX_QUESTION_CHARS:
            raise DataError(f"{where}: row {position} ({qid}): question of {len(text)} characters (max "
                            f"{MAX_QUESTION_CHARS})")
        if answer not in str(candidates).split(CANDIDATE_SEPARATOR):
            raise DataError(f"{where}: row {position} ({qid}): answer '{answer}' is not among its candidates "
                            f"({candidates})")
