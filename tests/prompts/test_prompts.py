"""Prompt sets: every dataset class has real manual prompts, names normalise, user YAML is validated clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from retune.errors import ConfigError, RetuneError
from retune.prompts import (
    ClassPrompts,
    available_prompt_sets,
    build_prompts,
    finding_phrase,
    manual_prompt_classes,
    normalise_class_name,
    prompt_texts,
    register_prompt_set,
)
from retune.prompts import sets as prompt_sets

NIH_CLASSES = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia", "No_Finding",
]  # fmt: skip
CHEXPERT_CLASSES = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
]  # fmt: skip
PHANTOM_CLASSES = ["Nodule", "Mass", "Effusion", "Cardiomegaly", "Pneumothorax", "Opacity"]


@pytest.mark.parametrize(
    "classes", [NIH_CLASSES, CHEXPERT_CLASSES, PHANTOM_CLASSES], ids=["nih", "chexpert", "phantom"]
)
def test_manual_set_covers_every_dataset_class(classes):
    prompts = build_prompts("manual", classes)
    assert list(prompts) == classes
    template = build_prompts("template", classes)
    for name in classes:
        p = prompts[name]
        assert p.source == "manual", name
        assert len(p.positive) >= 3 and len(p.negative) >= 3, name
        assert not set(p.positive) & set(p.negative), name
        assert all(text.strip() == text and text for text in p.positive + p.negative), name
        assert p.positive != template[name].positive, f"{name}: manual prompts are just the template"


def test_phantom_classes_match_the_phantom_generator():
    from retune.data.phantoms import PHANTOM_FINDINGS

    assert sorted(PHANTOM_FINDINGS) == sorted(PHANTOM_CLASSES)


def test_manual_prompts_are_clinically_specific():
    prompts = build_prompts(
        "manual", ["Cardiomegaly", "Pneumothorax", "Hernia", "Effusion", "Edema", "Support Devices"]
    )
    assert (
        "Enlarged cardiac silhouette with cardiothoracic ratio greater than 0.5." in prompts["Cardiomegaly"].positive
    )
    assert "Normal heart size." in prompts["Cardiomegaly"].negative
    assert any("pleural line" in t for t in prompts["Pneumothorax"].positive)
    assert all("hiatal hernia" in t.lower() or "retrocardiac" in t.lower() for t in prompts["Hernia"].positive)
    assert any("costophrenic" in t for t in prompts["Effusion"].positive)
    assert any("Kerley B" in t for t in prompts["Edema"].positive)
    assert any("pacemaker" in t for t in prompts["Support Devices"].positive)
    # Negatives negate the finding itself: each mentions "no"/"not"/"normal"/sharp-type wording.
    for name, p in prompts.items():
        for text in p.negative:
            lowered = text.lower()
            assert any(word in lowered for word in ("no ", "not ", "normal", "sharp", "clear", "smooth", "extend")), (
                name,
                text,
            )


def test_manual_yaml_keys_are_normalised_and_shipped_as_package_data():
    from importlib import resources

    assert (resources.files("retune.prompts") / "manual.yaml").is_file()
    keys = manual_prompt_classes()
    assert all(key == normalise_class_name(key) for key in keys)
    assert {"pleural thickening", "no finding", "support devices", "opacity"} <= set(keys)


def test_name_normalisation_matches_nih_and_chexpert_spellings():
    assert (
        normalise_class_name("Pleural_Thickening")
        == normalise_class_name("pleural  thickening")
        == "pleural thickening"
    )
    assert normalise_class_name("No_Finding") == normalise_class_name("No Finding") == "no finding"
    a = build_prompts("manual", ["Pleural_Thickening", "No_Finding"])
    b = build_prompts("manual", ["Pleural Thickening", "No Finding"])
    assert a["Pleural_Thickening"] == b["Pleural Thickening"]
    assert a["No_Finding"] == b["No Finding"]
    assert a["No_Finding"].source == "manual"


@pytest.mark.parametrize(
    ("name", "phrase"),
    [
        ("Pleural_Thickening", "pleural thickening"),
        ("Enlarged Cardiomediastinum", "enlarged cardiomediastinum"),
        ("Effusion", "effusion"),
        ("Pleural Effusion", "pleural effusion"),
        ("No_Finding", "no finding"),
        ("No Finding", "no finding"),
        ("  Lung__Opacity ", "lung opacity"),
    ],
)
def test_finding_phrase(name, phrase):
    assert finding_phrase(name) == phrase


def test_template_set_wording():
    p = build_prompts("template", ["Pleural_Thickening"])["Pleural_Thickening"]
    assert p.source == "template"
    assert p.positive == (
        "pleural thickening",
        "There is pleural thickening.",
        "Findings consistent with pleural thickening.",
        "Pleural thickening is present.",
    )
    assert p.negative == (
        "no pleural thickening",
        "There is no pleural thickening.",
        "No evidence of pleural thickening.",
        "Pleural thickening is absent.",
    )


@pytest.mark.parametrize("name", ["No Finding", "No_Finding"])
def test_template_no_finding_is_special(name):
    p = build_prompts("template", [name])[name]
    assert "No acute cardiopulmonary abnormality." in p.positive and "Normal chest radiograph." in p.positive
    assert "Abnormal chest radiograph." in p.negative
    assert "There is an acute cardiopulmonary abnormality." in p.negative
    assert not any("no finding" in t.lower() for t in p.positive + p.negative)


def test_manual_falls_back_to_template_for_unknown_class():
    prompts = build_prompts("manual", ["Cardiomegaly", "Aortic_Calcification"])
    assert prompts["Cardiomegaly"].source == "manual"
    fallback = prompts["Aortic_Calcification"]
    assert fallback.source == "template"
    assert fallback == build_prompts("template", ["Aortic_Calcification"])["Aortic_Calcification"]
    assert "There is aortic calcification." in fallback.positive
    assert [n for n, p in prompts.items() if p.source != "manual"] == ["Aortic_Calcification"]


def test_prompt_texts_deduplicates_in_order():
    prompts = {
        "A": ClassPrompts(positive=("x", "y"), negative=("z",), source="t"),
        "B": ClassPrompts(positive=("y", "w"), negative=("x", "v"), source="t"),
    }
    assert prompt_texts(prompts) == ["x", "y", "z", "w", "v"]
    # Effusion and Pleural Effusion share sentences in the manual set; they appear once.
    manual = build_prompts("manual", NIH_CLASSES + CHEXPERT_CLASSES)
    texts = prompt_texts(manual)
    assert len(texts) == len(set(texts))
    assert set(texts) == {t for p in manual.values() for t in p.positive + p.negative}


def test_unknown_prompt_set_lists_valid_names_and_mentions_yaml():
    with pytest.raises(ConfigError) as info:
        build_prompts("manaul", ["Cardiomegaly"])
    message = str(info.value)
    assert "manaul" in message and "manual" in message and "template" in message
    assert ".yaml" in message
    assert "\n" not in message
    assert {"manual", "template"} <= set(available_prompt_sets())


def test_registered_prompt_set_is_used_and_must_cover_all_classes(monkeypatch):
    monkeypatch.setattr(prompt_sets, "_PROMPT_SETS", dict(prompt_sets._PROMPT_SETS))

    @register_prompt_set("only-a")
    def only_a(classes):
        return {"A": ClassPrompts(positive=("a",), negative=("not a",), source="only-a")}

    assert "only-a" in available_prompt_sets()
    assert build_prompts("only-a", ["A"])["A"].source == "only-a"
    with pytest.raises(ConfigError, match="only-a.*B"):
        build_prompts("only-a", ["A", "B"])


# ----------------------------------------------------------------------------------------- user YAML


def _write(tmp_path: Path, text: str, name: str = "prompts.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD_YAML = """
Cardiomegaly:
  positive: ["Enlarged heart.", "Cardiomegaly."]
  negative: ["Normal heart size."]
Pleural_Thickening:
  positive:
    - "Pleural thickening."
  negative:
    - "No pleural thickening."
Extra Class:
  positive: ["extra"]
  negative: ["no extra"]
"""


def test_user_yaml_loads_and_matches_normalised_names(tmp_path):
    path = _write(tmp_path, GOOD_YAML)
    prompts = build_prompts(str(path), ["Cardiomegaly", "Pleural Thickening"])
    assert list(prompts) == ["Cardiomegaly", "Pleural Thickening"]
    assert prompts["Cardiomegaly"].positive == ("Enlarged heart.", "Cardiomegaly.")
    assert prompts["Cardiomegaly"].negative == ("Normal heart size.",)
    assert prompts["Pleural Thickening"].negative == ("No pleural thickening.",)
    assert prompts["Cardiomegaly"].source == f"file:{path}"


def test_user_yaml_recognised_by_existence_without_suffix(tmp_path):
    path = _write(tmp_path, GOOD_YAML, name="my_prompts.txt")
    assert build_prompts(str(path), ["Cardiomegaly"])["Cardiomegaly"].negative == ("Normal heart size.",)


def test_user_yaml_missing_file_names_it(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml.*not found"):
        build_prompts(str(missing), ["Cardiomegaly"])


def test_user_yaml_parse_error_names_file(tmp_path):
    path = _write(tmp_path, "Cardiomegaly: [unclosed\n  positive: x")
    with pytest.raises(ConfigError) as info:
        build_prompts(str(path), ["Cardiomegaly"])
    assert str(path) in str(info.value) and "YAML" in str(info.value)
    assert "\n" not in str(info.value)


def test_user_yaml_missing_class_lists_what_it_has(tmp_path):
    path = _write(tmp_path, GOOD_YAML)
    with pytest.raises(ConfigError) as info:
        build_prompts(str(path), ["Cardiomegaly", "Hernia"])
    assert str(info.value) == (
        f"{path}: no prompts for class 'Hernia' (has: Cardiomegaly, Pleural_Thickening, Extra Class)"
    )


@pytest.mark.parametrize(
    ("body", "side"),
    [
        ('  positive: []\n  negative: ["no"]\n', "positive"),
        ('  positive: ["yes"]\n  negative: "Normal heart size."\n', "negative"),
        ('  positive: ["yes", ""]\n  negative: ["no"]\n', "positive"),
        ('  positive: ["yes"]\n  negative: ["no", 3]\n', "negative"),
        ('  positive: ["yes"]\n', "negative"),
        ('  positive: ["  "]\n  negative: ["no"]\n', "positive"),
    ],
)
def test_user_yaml_bad_side_names_file_class_and_side(tmp_path, body, side):
    path = _write(tmp_path, "Cardiomegaly:\n" + body)
    with pytest.raises(ConfigError) as info:
        build_prompts(str(path), ["Cardiomegaly"])
    message = str(info.value)
    assert message.startswith(f"{path}: class 'Cardiomegaly' {side}: ")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("- a\n- b\n", "mapping"),
        ("Cardiomegaly: [a, b]\n", "'Cardiomegaly'"),
        ('Cardiomegaly:\n  positive: ["a"]\n  negative: ["b"]\n  negatives: ["c"]\n', "negatives"),
        ('Cardiomegaly:\n  positive: ["a"]\n  negative: ["a"]\n', "both"),
        (
            'Pleural_Thickening:\n  positive: ["a"]\n  negative: ["b"]\n'
            'pleural thickening:\n  positive: ["c"]\n  negative: ["d"]\n',
            "normalisation",
        ),
    ],
)
def test_user_yaml_structural_errors(tmp_path, text, fragment):
    path = _write(tmp_path, text)
    with pytest.raises(RetuneError) as info:  # an empty file is refused by the file check (DataError), the rest here
        build_prompts(str(path), ["Cardiomegaly"])
    assert str(path) in str(info.value) and fragment in str(info.value)
