"""The cross-attention adaptor experiment end to end on the default backbone: 80 phantoms (reports, Python API) and
200 NIH images (label sentences, through ``retune adaptor run``).

Tiny adaptor (2 layers, width 64) and few epochs keep the file within a few minutes on two loaded cores.
Numbers come from the general-domain default backbone; only the plumbing and sanity bounds are checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safetensors.numpy import load_file
from typer.testing import CliRunner

from retune.cli import app
from retune.config import AdaptorExperimentConfig, DataConfig, OptimConfig
from retune.data.phantoms import write_phantom_dataset
from retune.experiments.adaptor import run_adaptor_experiment
from retune.store import EmbeddingStore

FRACTIONS = ["0.01", "0.1", "1.0"]
NIH_ROWS = 200
NIH_CLASSES = ["Atelectasis", "Effusion", "Infiltration", "Nodule", "Mass", "No_Finding"]


def experiment(
    csv: Path, root: Path, classes: list[str] | None = None, epochs: int = 12, min_positives: int = 10
) -> AdaptorExperimentConfig:
    optim = OptimConfig(lr=1e-3, weight_decay=0.05, epochs=epochs, batch_size=32, patience=6, min_epochs=3)
    return AdaptorExperimentConfig(
        store=root / "store",
        data=DataConfig(csv=csv, classes=classes, allow_outside_root=True),
        layers=2,
        width=64,
        embed_dim=32,
        heads=4,
        optim=optim,
        n_bootstrap=50,
        min_positives=min_positives,
    )


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory) -> tuple[dict, Path, AdaptorExperimentConfig]:
    root = tmp_path_factory.mktemp("adaptor-phantoms")
    config = experiment(write_phantom_dataset(root / "data", n=80), root, min_positives=1)  # few test positives
    metrics = run_adaptor_experiment(config, root / "run")
    return metrics, root / "run", config


@pytest.fixture(scope="module")
def nih_run(nih_head_csv, tmp_path_factory) -> tuple[dict, Path, AdaptorExperimentConfig]:
    root = tmp_path_factory.mktemp("adaptor-nih")
    csv = nih_head_csv(NIH_ROWS, root / "nih200.csv")
    config = experiment(csv, root, NIH_CLASSES)
    config_file = root / "adaptor.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    result = CliRunner().invoke(
        app, ["adaptor", "run", "--config", str(config_file), "--out", str(root / "run")], env={"COLUMNS": "1000"}
    )
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert "R@1" in result.output  # the CLI prints the retrieval table
    return json.loads((root / "run" / "metrics.json").read_text()), root / "run", config


def check_metrics_file(metrics: dict, run_dir: Path, text_source: str) -> None:
    """Fields exist, recalls are shares, every fraction has adaptor + frozen records, nested train sets."""
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert (
        metrics["method"] == "xattn_adaptor"
        and metrics["backbone"] == "default"
        and "general-domain" in metrics["note"]
    )
    retrieval = metrics["retrieval"]
    assert retrieval["text_source"] == text_source
    assert retrieval["frozen"] is None  # default towers are not aligned
    for direction in ("image_to_text", "text_to_image"):
        recalls = retrieval["adaptor"][direction]
        assert set(recalls) == {"R@1", "R@5", "R@10"}
        assert all(0.0 <= value <= 1.0 for value in recalls.values())
        assert recalls["R@1"] <= recalls["R@5"] <= recalls["R@10"]
    assert list(metrics["label_fractions"]) == FRACTIONS
    sizes = []
    for fraction in FRACTIONS:
        block = metrics["label_fractions"][fraction]
        assert (
            block["adaptor"]["method"] == "xattn_adaptor+linear_probe" and block["frozen"]["method"] == "linear_probe"
        )
        assert block["adaptor"]["split"] == "test" and block["adaptor"]["n_images"] == block["frozen"]["n_images"]
        assert block["adaptor"]["n_train_images"] == block["frozen"]["n_train_images"]
        sizes.append(block["adaptor"]["n_train_images"])
        for record in block.values():
            assert record["mean_auroc"] is None or 0.0 <= record["mean_auroc"] <= 1.0
    assert sizes[0] <= sizes[1] < sizes[2]
    pretraining = metrics["pretraining"]
    assert pretraining["trainable_parameters"] > 0 and 1 <= pretraining["best_epoch"] <= pretraining["epochs_run"]
    assert 0.0 <= pretraining["best_val_score"] <= 1.0


def check_checkpoint(run_dir: Path, n_images: int) -> None:
    """Adaptor + probe weights only: no tensor has a dimension equal to the number of images or split sizes."""
    facts = json.loads((run_dir / "config.json").read_text())
    row_counts = {n_images, *facts["split"]["sizes"].values()}
    tensors = load_file(str(run_dir / "checkpoint.safetensors"))
    assert any(key.startswith("xattn_adaptor/image_tower") for key in tensors)
    assert {"probe_adaptor@1.0/weights", "probe_frozen@0.01/weights"} <= set(tensors)
    offending = {key: value.shape for key, value in tensors.items() if row_counts & set(value.shape)}
    assert not offending


def test_phantom_experiment_writes_complete_results(phantom_run):
    metrics, run_dir, config = phantom_run
    check_metrics_file(metrics, run_dir, "report")
    check_checkpoint(run_dir, 80)
    pretraining = metrics["pretraining"]
    assert pretraining["final_train_loss"] < pretraining["train_loss"][0]
    full = metrics["label_fractions"]["1.0"]
    assert full["adaptor"]["mean_auroc"] > 0.6 and full["frozen"]["mean_auroc"] > 0.6  # phantom findings are learnable
    rows = EmbeddingStore(config.store).summary()["rows"][metrics["backbone_fingerprint"]]
    assert rows["tokens"] == rows["images"] == 80 and 0 < rows["text_tokens"] <= 80


@pytest.mark.integration
def test_nih_experiment_with_label_sentences(nih_run):
    metrics, run_dir, _ = nih_run
    check_metrics_file(metrics, run_dir, "label_sentence")
    check_checkpoint(run_dir, NIH_ROWS)
    adaptor_retrieval = metrics["retrieval"]["adaptor"]
    assert adaptor_retrieval["n_texts"] < adaptor_retrieval["n_images"]  # repeated label sentences are one candidate
    frozen = metrics["label_fractions"]["1.0"]["frozen"]
    left_out = set(frozen["undefined_classes"]) | set(frozen["too_few_positives"])
    covered = [record["auroc"] for name, record in frozen["per_class"].items() if name not in left_out]
    assert covered and frozen["mean_auroc"] == pytest.approx(sum(covered) / len(covered), abs=1e-9)
