"""Every YAML under configs/ validates with the config model its command reads, and its own relative paths resolve
against configs/ onto the data and store folders a user of the repo expects (../shared/data, stores/)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from retune.config import DataConfig, PeftExperimentConfig, TrainConfig, load_yaml_config
from retune.data.questions import QuestionSetConfig
from retune.distributed.ray_tune import TuneConfig
from retune.experiments.vqa import VqaExperimentConfig
from retune.objectives import ObjectivesBenchConfig
from retune.scenarios.spec import ScenarioConfig
from retune.segmentation.config import SegmentationConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
MODELS: dict[str, type[BaseModel]] = {
    "nih-train.yaml": TrainConfig,
    "peft-*.yaml": PeftExperimentConfig,
    "nih-*-incremental.yaml": ScenarioConfig,
    "results-nih-*.yaml": ScenarioConfig,
    "site-incremental-*.yaml": ScenarioConfig,
    "objectives-*.yaml": ObjectivesBenchConfig,
    "seg-*.yaml": SegmentationConfig,
    "tune-*.yaml": TuneConfig,
}
VQA_SECTIONS = {"data": DataConfig, "questions": QuestionSetConfig, "run": VqaExperimentConfig}


def model_of(path: Path) -> type[BaseModel] | None:
    matches = [model for pattern, model in MODELS.items() if fnmatch.fnmatch(path.name, pattern)]
    assert len(matches) <= 1, f"{path.name} matches several config models"
    return matches[0] if matches else None


def paths_in(value: object) -> list[Path]:
    """Every Path field of a config, nested configs and lists included."""
    if isinstance(value, BaseModel):
        return [p for name in type(value).model_fields for p in paths_in(getattr(value, name))]
    if isinstance(value, list):
        return [p for item in value for p in paths_in(item)]
    return [value] if isinstance(value, Path) else []


def test_every_shipped_config_has_a_model():
    orphans = [path.name for path in CONFIGS if model_of(path) is None and path.name != "vqa-nih.yaml"]
    assert CONFIGS and orphans == []


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name != "vqa-nih.yaml"], ids=lambda p: p.name)
def test_a_shipped_config_resolves_its_paths_against_its_folder(path: Path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # a config means the same from any folder
    config = load_yaml_config(path, model_of(path))
    own = [Path(p) for p in paths_in(config) if Path(p).is_absolute()]
    stores = [p for p in own if "stores" in p.parts]
    data = [p for p in own if "shared" in p.parts]
    assert own and all(p.is_relative_to(ROOT.parent) for p in own), own
    assert all(p.parent == ROOT / "stores" for p in stores), stores
    assert all(p.is_relative_to(ROOT.parent / "shared" / "data") for p in data), data


@pytest.mark.integration
@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name != "vqa-nih.yaml"], ids=lambda p: p.name)
def test_the_data_a_shipped_config_names_exists(path: Path, shared_data: Path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config = load_yaml_config(path, model_of(path))
    missing = [p for p in paths_in(config) if "shared" in Path(p).parts and not Path(p).exists()]
    assert missing == []


def test_the_vqa_results_config_validates_section_by_section():
    settings = yaml.safe_load((ROOT / "configs" / "vqa-nih.yaml").read_text())
    for section, model in VQA_SECTIONS.items():
        model.model_validate(settings[section])
    assert settings["data"]["csv"].startswith("../../shared/data/")
