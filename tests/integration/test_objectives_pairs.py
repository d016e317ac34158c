"""Real pairs for the objectives: cxr-seg images with their clinical notes (empty notes skipped and counted), the
Open-i reports as text-only texts, and the shipped bench configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retune.config import load_yaml_config
from retune.data.splits import patient_split
from retune.objectives import ObjectivesBenchConfig, parse_mix
from retune.objectives.pairs import csv_pair_texts, read_pair_csv, text_only_texts

pytestmark = pytest.mark.integration
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_cxr_seg_notes_pair_with_their_images_and_split_by_patient(shared_data):
    config = load_yaml_config(CONFIGS / "objectives-cxr-seg.yaml", ObjectivesBenchConfig)
    config.data.csv = shared_data / "cxr-seg" / "masks.csv"
    table, skipped = read_pair_csv(config.data, config.pairs)
    texts = csv_pair_texts(table, config.pairs.text_column)
    assert len(table) + skipped == 339 and all(text.strip() for text in texts.texts)
    splits = patient_split(table.patients, config.split.fractions, config.split.seed)
    train, test = set(table.patients[splits["train"]]), set(table.patients[splits["test"]])
    assert train and test and not train & test


def test_openi_reports_as_text_only_texts(label_tables):
    texts = text_only_texts(label_tables / "NLMCXR_reports.tgz")
    assert 3900 < len(texts) <= 3955 and len(set(texts)) > 2000
    assert np.mean([len(text.split()) for text in texts]) > 10


def test_shipped_nih_config_names_every_objective():
    config = load_yaml_config(CONFIGS / "objectives-nih.yaml", ObjectivesBenchConfig)
    used = {name for mix in config.mixes.values() for name in parse_mix(mix)}
    assert used == {"clip", "siglip", "masked", "unimodal", "caption", "filip"} and len(config.seeds) == 3
