"""VQA fixtures: phantom labels, their question set and a tiny random hf-pair backbone (DINOv2 + BERT, built offline
by the PEFT tests' builder)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from retune.config import DataConfig
from retune.data.phantoms import write_phantom_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_peft_tuning import tiny_hf_pair  # noqa: E402  (the PEFT tests' offline tiny-model builder)


@pytest.fixture(autouse=True)
def offline_hub(tmp_path, monkeypatch):
    """An empty offline HF cache so nothing is fetched."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def phantom_labels(tmp_path_factory) -> Path:
    """60 phantom images of 30 patients with six findings."""
    return write_phantom_dataset(tmp_path_factory.mktemp("vqa-phantoms"), n=60, seed=3, size=32)


@pytest.fixture(scope="session")
def question_file(phantom_labels, tmp_path_factory) -> Path:
    """The phantoms' question set (default build settings), written once."""
    from retune.experiments.vqa import build_question_file

    target = tmp_path_factory.mktemp("vqa-questions") / "qa.parquet"
    build_question_file(DataConfig(csv=phantom_labels), target)
    return target


@pytest.fixture(scope="session")
def tiny_spec(tmp_path_factory) -> str:
    return tiny_hf_pair(tmp_path_factory.mktemp("tiny-hf-pair"))
