"""Question sets built from labels: balance, adversarial pairing, held-out phrasings and findings, patient split,
and the checks every question table passes."""

from __future__ import annotations

import pandas as pd
import pytest

from retune.data.questions import (
    PHRASINGS,
    QuestionSetConfig,
    build_questions,
    check_questions,
    question_facts,
    read_questions,
)
from retune.data.readers import read_table
from retune.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def table(phantom_labels):
    return read_table(phantom_labels)


@pytest.fixture(scope="module")
def questions(table) -> pd.DataFrame:
    return build_questions(table, QuestionSetConfig(held_out_findings=["Mass"], seed=1))


def labels_by_path(table) -> dict[str, dict[str, float]]:
    frame = table.frame.set_index("image_path")
    return {path: frame.loc[path, list(table.classes)].to_dict() for path in frame.index}


def test_every_answer_matches_the_labels_of_its_image(table, questions):
    labels = labels_by_path(table)
    yes_no = questions[questions["type"] == "yes_no"]
    truth = [labels[path][finding] for path, finding in zip(yes_no["image_path"], yes_no["finding"])]
    assert list(yes_no["answer"]) == ["yes" if value == 1 else "no" for value in truth]
    choice = questions[questions["type"] == "choice"]
    for path, options, answer, candidates in choice[["image_path", "finding", "answer", "candidates"]].itertuples(
            index=False):
        present = [name for name in options.split("|") if labels[path][name] == 1]
        assert len(present) <= 1
        assert (answer == "none") == (not present)
        assert candidates.split("|")[-1] == "none"


def test_yes_and_no_are_balanced_per_finding_in_training(questions):
    train = questions[(questions["split"] == "train") & (questions["type"] == "yes_no")]
    counts = train.groupby(["finding", "answer"]).size().unstack(fill_value=0)
    assert (counts["yes"] > 0).all()
    assert ((counts["yes"] - counts["no"]).abs() <= 1).all(), counts


def test_each_yes_is_paired_with_an_adversarial_no_on_the_same_image(questions):
    paired = questions[questions["pair_id"] != ""]
    groups = paired.groupby("pair_id")
    assert len(groups) == int((questions["role"] == "yes").sum()) > 0
    for _, pair in groups:
        assert sorted(pair["role"]) == ["adversarial_no", "yes"]
        assert pair["image_path"].nunique() == 1
        assert pair["finding"].nunique() == 2
        assert list(pair.sort_values("role")["answer"]) == ["no", "yes"]


def test_held_out_phrasings_and_findings_never_reach_training(questions):
    held_out = [PHRASINGS[i] for i in QuestionSetConfig().held_out_phrasings]
    train, other = questions[questions["split"] == "train"], questions[questions["split"] != "train"]
    assert not train["unseen_phrasing"].any() and not train["unseen_finding"].any()
    assert not train["finding"].str.contains("Mass").any()
    assert not train["phrasing"].isin(QuestionSetConfig().held_out_phrasings).any()
    assert other["unseen_phrasing"].any() and other["unseen_finding"].any()
    unseen_text = other.loc[other["unseen_phrasing"], ["question", "phrasing"]]
    for question, phrasing in unseen_text.itertuples(index=False):
        prefix = PHRASINGS[phrasing].split("{finding}")[0]
        assert question.startswith(prefix) and PHRASINGS[phrasing] in held_out
    assert other.loc[other["finding"] == "Mass", "unseen_finding"].all()


def test_phrasings_and_synonyms_vary(questions):
    effusion = questions[(questions["type"] == "yes_no") & (questions["finding"] == "Effusion")]
    assert effusion["phrasing"].nunique() >= 5
    assert effusion["question"].str.contains("fluid around the lung").any()
    assert effusion["question"].str.contains("pleural effusion").any()


def test_patients_stay_in_one_split(questions):
    assert (questions.groupby("patient_id")["split"].nunique() == 1).all()


def test_same_seed_same_questions(table, questions):
    again = build_questions(table, QuestionSetConfig(held_out_findings=["Mass"], seed=1))
    pd.testing.assert_frame_equal(again, questions)


def test_the_default_held_out_finding_is_chosen_and_recorded(table):
    frame = build_questions(table)
    held_out = frame.attrs["held_out_findings"]
    assert len(held_out) == 1
    assert set(frame.loc[frame["unseen_finding"] & (frame["type"] == "yes_no"), "finding"]) == set(held_out)


def test_bad_settings_are_one_line_errors(table):
    with pytest.raises(ConfigError, match="Hernia"):
        build_questions(table, QuestionSetConfig(held_out_findings=["Hernia"]))
    with pytest.raises(ValueError, match="phrasing indices"):
        QuestionSetConfig(held_out_phrasings=[len(PHRASINGS)])


def test_question_file_round_trip_and_facts(question_file):
    frame = read_questions(question_file)
    facts = question_facts(question_file)
    assert facts["held_out_findings"] and facts["findings"]
    assert frame["unseen_finding"].dtype == bool and len(frame) > 50


@pytest.mark.parametrize(
    "change, message",
    [
        ({"question": ""}, "empty question"),
        ({"question": "Is there " + "x" * 5000 + "?"}, "5010 characters"),
        ({"answer": "maybe"}, "answer 'maybe' is not among its candidates"),
    ],
)
def test_bad_questions_name_the_row(questions, change, message):
    frame = questions.head(5).copy()
    for column, value in change.items():
        frame.loc[3, column] = value
    with pytest.raises(DataError, match=rf"qa.parquet: row 3 \({frame.loc[3, 'question_id']}\): .*{message}"):
        check_questions(frame, "qa.parquet")


def test_a_file_with_missing_columns_or_not_parquet_is_refused(questions, tmp_path):
    questions.drop(columns=["answer"]).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="missing column.*answer"):
        read_questions(tmp_path / "bad.parquet")
    (tmp_path / "text.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a readable Parquet"):
        read_questions(tmp_path / "text.parquet")
    assert questions["question_id"].is_unique
