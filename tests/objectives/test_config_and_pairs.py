"""Objective mixes and bench configs: one-line errors naming the field; pair texts: synthetic phrasings, real CSV
texts with empty texts and missing images named by row, truncation said once."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from retune.config import DataConfig, load_yaml_config
from retune.data.table import ImageTable
from retune.errors import ConfigError, DataError
from retune.experiments.adaptor_bench import warn_truncated
from retune.objectives import ObjectivesBenchConfig, parse_mix
from retune.objectives.config import PairsConfig
from retune.objectives.pairs import csv_pair_texts, label_pair_texts, read_pair_csv, text_only_texts


def test_mix_parses_weights_and_options():
    mix = parse_mix({"clip": 1.0, "caption": 0.5, "masked": {"ratio": 0.25}})
    assert mix["caption"].weight == 0.5 and mix["masked"].ratio == 0.25 and mix["masked"].weight == 1.0


@pytest.mark.parametrize(
    ("mix", "message"),
    [
        ({"clp": 1.0}, "unknown objective 'clp'; valid: caption, clip"),
        ({"clip": -0.5}, "clip.weight: Input should be greater than or equal to 0"),
        ({"clip": 0.0, "caption": 0}, "every weight is 0"),
        ({"masked": {"ratio": 1.0}}, "masked.ratio: Input should be less than 1"),
        ({"masked": {"ratio": -0.1}}, "masked.ratio: Input should be greater than or equal to 0"),
        ({"masked": {"ratios": 0.5}}, "masked.ratios: Extra inputs are not permitted"),
    ],
)
def test_bad_mixes_are_one_line_naming_the_field(tmp_path, mix, message):
    config = tmp_path / "bench.yaml"
    config.write_text(f"mixes:\n  mine: {mix!r}\n".replace("'", '"'))
    with pytest.raises(ConfigError) as error:
        load_yaml_config(config, ObjectivesBenchConfig)
    text = str(error.value)
    assert "\n" not in text and "field 'mixes'" in text and "mixes.mine: " + message in text


def _table(labels: dict[str, list[float]]) -> ImageTable:
    n = len(next(iter(labels.values())))
    frame = pd.DataFrame({"image_path": [f"{i}.png" for i in range(n)], "patient_id": [str(i) for i in range(n)],
                          **labels})
    return ImageTable(frame, list(labels))


def test_label_texts_vary_in_training_only_and_group_by_label_set():
    table = _table({"Effusion": [1, 1, 1, 1, 0, 0, 1, 1], "No_Finding": [0, 0, 0, 0, 1, 1, 0, 0],
                    "Mass": [0, 0, 0, 0, 0, 0, 1, 1]})
    pairs = label_pair_texts(table, phrasings=4, train_rows=np.arange(4), seed=3)
    assert len(set(pairs.texts[:4])) > 1 and "synthetic" in pairs.source.lower()
    assert pairs.texts[6] == pairs.texts[7] == "Effusion. Mass." and pairs.texts[4] == pairs.texts[5]
    assert len(set(pairs.groups[:4])) == 1 and pairs.groups[4] == pairs.groups[5] != pairs.groups[0]
    assert pairs.groups[6] != pairs.groups[0]


def _pair_csv(tmp_path, texts: list[str], missing: int | None = None):
    tmp_path.mkdir(exist_ok=True)
    rows = []
    for index, text in enumerate(texts):
        path = tmp_path / f"{index}.png"
        if index != missing:
            Image.new("L", (8, 8)).save(path)
        rows.append({"path": path.name, "patient_id": f"p{index // 2}", "notes": text})
    csv = tmp_path / "pairs.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def test_pair_csv_names_the_row_of_an_empty_text_or_a_missing_image(tmp_path):
    csv = _pair_csv(tmp_path, ["Left effusion.", "  ", "Big heart."])
    with pytest.raises(DataError, match=r"pairs.csv row 3, column 'notes': empty text"):
        read_pair_csv(DataConfig(csv=csv), PairsConfig(source="csv", text_column="notes"))
    table, skipped = read_pair_csv(DataConfig(csv=csv), PairsConfig(source="csv", text_column="notes",
                                                                    empty_text="skip"))
    assert skipped == 1 and csv_pair_texts(table, "notes").texts == ["Left effusion.", "Big heart."]
    csv = _pair_csv(tmp_path / "other", ["a", "b", "c"], missing=1)
    with pytest.raises(DataError, match=r"pairs.csv row 3, column 'path': image .*1.png not found"):
        read_pair_csv(DataConfig(csv=csv), PairsConfig(source="csv", text_column="notes"))


def test_truncated_texts_are_said_once():
    mask = np.array([[True, True, True], [True, False, False], [True, True, True]])
    with pytest.warns(UserWarning, match="2 text") as caught:
        assert warn_truncated(["long one", "short", "long two"], mask, 3) == 2
    assert len(caught) == 1


def test_text_only_csv_needs_a_text_column(tmp_path):
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    pd.DataFrame({"text": ["No effusion.", " ", "Clear lungs."]}).to_csv(good, index=False)
    pd.DataFrame({"report": ["x"]}).to_csv(bad, index=False)
    assert text_only_texts(good) == ["No effusion.", "Clear lungs."]
    assert text_only_texts(good, limit=1) == ["No effusion."]
    with pytest.raises(DataError, match="missing column 'text'"):
        text_only_texts(bad)


def test_objectives_key_runs_one_mix_and_names_its_field(tmp_path):
    config = tmp_path / "one.yaml"
    config.write_text("objectives: {clip: 1.0, caption: 0.5, masked: {ratio: 0.5}}\n")
    loaded = load_yaml_config(config, ObjectivesBenchConfig)
    assert list(loaded.mix_specs()) == ["clip+caption+masked"]
    config.write_text("objectives: {clip: 0, masked: {weight: 0, ratio: 0.5}}\n")
    with pytest.raises(ConfigError, match=r"field 'objectives': Value error, every weight is 0"):
        load_yaml_config(config, ObjectivesBenchConfig)
