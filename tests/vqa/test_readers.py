"""VQA-RAD and SLAKE readers on small fixtures written in the published formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from retune.data.vqa_sets import read_slake, read_vqa_rad
from retune.errors import ConfigError, DataError


def vqa_rad_record(qid: int, image: str, question: str, answer, answer_type: str, phrase_type: str) -> dict:
    """One record as VQA_RAD Dataset Public.json has it."""
    return {"qid": qid, "phrase_type": phrase_type, "qid_linked_id": f"03f451ca-de62-4617-9679-{qid:012d}",
            "image_case_url": "https://medpix.nlm.nih.gov/case?id=48e1dd0e", "image_name": image,
            "image_organ": "CHEST", "evaluation": "not evaluated", "question": question, "question_rephrase": "NULL",
            "question_relation": "NULL", "question_frame": "NULL", "question_type": "PRES", "answer": answer,
            "answer_type": answer_type}


def slake_record(qid: int, image: str, question: str, answer: str, answer_type: str, lang: str = "en") -> dict:
    """One record as SLAKE's train.json / test.json have it."""
    return {"img_id": qid // 3 + 1, "img_name": image, "question": question, "answer": answer, "q_lang": lang,
            "location": "Lung", "modality": "X-Ray", "answer_type": answer_type, "base_type": "vqa",
            "content_type": "Abnormality", "triple": ["vhead", "_", "_"], "qid": qid}


def write_images(folder: Path, names: list[str]) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (16, 16), 90).save(folder / name)


@pytest.fixture
def vqa_rad(tmp_path) -> Path:
    records = [
        vqa_rad_record(0, "synpic100.jpg", "Is there a pleural effusion?", "Yes", "CLOSED", "freeform"),
        vqa_rad_record(1, "synpic100.jpg", "Is the heart enlarged?", "no", "CLOSED", "para"),
        vqa_rad_record(2, "synpic200.jpg", "Which side is the effusion on?", "Left", "OPEN", "freeform"),
        vqa_rad_record(3, "synpic200.jpg", "How many nodules are seen?", 2, "OPEN", "test_freeform"),
        vqa_rad_record(4, "synpic300.jpg", "Is this a PA film?", "YES", "CLOSED", "test_para"),
    ]
    write_images(tmp_path / "VQA_RAD Image Folder", ["synpic100.jpg", "synpic200.jpg", "synpic300.jpg"])
    path = tmp_path / "VQA_RAD Dataset Public.json"
    path.write_text(json.dumps(records))
    return path


def test_vqa_rad_closed_yes_no_and_open_answers_from_the_vocabulary(vqa_rad):
    frame = read_vqa_rad(vqa_rad)
    assert list(frame["answer"]) == ["yes", "no", "left", "2", "yes"]
    assert list(frame["type"]) == ["yes_no", "yes_no", "open", "open", "yes_no"]
    assert frame.loc[2, "candidates"].split("|") == ["2", "left"]
    assert list(frame.loc[[3, 4], "split"]) == ["test", "test"]
    assert set(frame.loc[:2, "split"]) <= {"train", "val"}
    assert frame.loc[0, "image_path"].endswith("VQA_RAD Image Folder/synpic100.jpg")
    assert len(read_vqa_rad(vqa_rad, include_open=False)) == 3


def test_slake_english_only_split_from_the_file_name(tmp_path):
    records = [
        slake_record(0, "xmlab1/source.jpg", "Does the picture contain lung?", "Yes", "CLOSED"),
        slake_record(1, "xmlab1/source.jpg", "图片中包含肺吗?", "是", "CLOSED", lang="zh"),
        slake_record(2, "xmlab2/source.jpg", "Where is the abnormality?", "Right Lung", "OPEN"),
    ]
    write_images(tmp_path / "imgs", ["xmlab1/source.jpg", "xmlab2/source.jpg"])
    (tmp_path / "test.json").write_text(json.dumps(records, ensure_ascii=False))
    frame = read_slake(tmp_path / "test.json")
    assert list(frame["answer"]) == ["yes", "right lung"]
    assert list(frame["split"]) == ["test", "test"]
    assert list(frame["question_id"]) == ["slake-0", "slake-2"]


def test_a_record_without_a_field_names_file_and_record(vqa_rad):
    records = json.loads(vqa_rad.read_text())
    del records[3]["question"]
    vqa_rad.write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"Public.json: record 3 \(qid 3\): missing field\(s\) question"):
        read_vqa_rad(vqa_rad)


def test_a_missing_image_names_file_and_record(vqa_rad):
    (vqa_rad.parent / "VQA_RAD Image Folder" / "synpic200.jpg").unlink()
    with pytest.raises(DataError, match=r"record 2 \(qid 2\): image .*synpic200.jpg not found"):
        read_vqa_rad(vqa_rad)


def test_not_json_or_not_a_list_is_one_line(tmp_path):
    (tmp_path / "train.json").write_text("{oops")
    with pytest.raises(DataError, match="train.json: not valid JSON"):
        read_slake(tmp_path / "train.json")
    (tmp_path / "train.json").write_text('{"qid": 1}')
    with pytest.raises(DataError, match="expected a JSON list"):
        read_slake(tmp_path / "train.json")


def test_import_writes_a_question_file_training_can_read(vqa_rad, tmp_path):
    from retune import api
    from retune.data.questions import read_questions

    api.vqa_import(vqa_rad, tmp_path / "qa.parquet", "vqa-rad")
    frame = read_questions(tmp_path / "qa.parquet")
    assert list(frame["question_id"]) == [f"vqa-rad-{qid}" for qid in range(5)]
    with pytest.raises(ConfigError, match="unknown VQA format 'pathvqa'"):
        api.vqa_import(vqa_rad, tmp_path / "other.parquet", "pathvqa")
