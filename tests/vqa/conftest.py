"""VQA fixtures: phantom labels, their question set and a tiny random hf-pair backbone (DINOv2 + BERT, built offline
by the PEFT tests' builder)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import tiny_hf_pair

from retune import api
from retune.config import DataConfig
from retune.data.phantoms import write_phantom_dataset
from retune.experiments.vqa import VqaExperimentConfig


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


FAST = {"epochs": 2, "batch_size": 16, "min_epochs": 1, "patience": 2, "lr": 1e-3, "precision": "fp32"}


def vqa_config(spec: str, questions: Path, store: Path, **options) -> VqaExperimentConfig:
    return VqaExperimentConfig(backbone=spec, store=store, questions=questions, device="cpu", n_bootstrap=20,
                               width=16, heads=2, max_text_tokens=12, optim=FAST, **options)


@pytest.fixture(scope="session")
def frozen_run(tiny_spec, question_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vqa-frozen") / "run"
    api.vqa_train(vqa_config(tiny_spec, question_file, out.parent / "store"), out)
    return out


@pytest.fixture(scope="session")
def lora_run(tiny_spec, question_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vqa-lora") / "run"
    api.vqa_train(vqa_config(tiny_spec, question_file, out.parent / "store", method="lora", tower="both",
                            classifier=False), out)
    return out


@pytest.fixture(scope="session")
def small_config():
    """``vqa_config``: a VQA config small enough for a unit test."""
    return vqa_config
