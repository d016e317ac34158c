"""Encoder tuning under the RE-tune head on 120 real NIH ChestX-ray14 images with the default backbone.

LoRA on the image tower (1 epoch, through ``retune peft run``, then ``retune evaluate`` and ``retune predict`` on
the saved run) and freeze-k (k = 5 of EfficientNet-Lite0's 7 stages, cached prefix) each
write a metrics.json in the ``retune train`` format plus trainable parameters, peak memory and time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from safetensors.numpy import load_file
from typer.testing import CliRunner

from retune.cli import app
from retune.config import PeftExperimentConfig
from retune.experiments.peft import compare_prefix_caching, run_peft_experiment

pytestmark = pytest.mark.integration

N_ROWS = 120
CLASSES = ["Atelectasis", "Effusion", "Infiltration", "No_Finding"]
STANDARD_FIELDS = {
    "method",
    "backbone",
    "backbone_fingerprint",
    "split",
    "classes",
    "per_class",
    "mean_auroc",
    "mean_auroc_ci",
    "n_images",
    "seed",
    "note",
}
EXTRA_FIELDS = {
    "trainable_parameters",
    "total_parameters",
    "trainable_percent",
    "peak_memory_mb",
    "peak_memory_source",
    "seconds",
    "train_seconds",
    "tuning",
}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("peft-nih")


@pytest.fixture(scope="module")
def nih_csv(nih_head_csv, work: Path) -> Path:
    """The first 120 NIH rows with absolute image paths."""
    return nih_head_csv(N_ROWS, work / "nih120.csv")


def experiment(work: Path, nih_csv: Path, **overrides) -> PeftExperimentConfig:
    settings = dict(
        store=work / "store",
        data={"csv": nih_csv, "classes": CLASSES, "allow_outside_root": True},
        epochs=1,
        batch_size=16,
        n_bootstrap=50,
        device="cpu",
    )
    return PeftExperimentConfig(**{**settings, **overrides})


def check_run(metrics: dict, run_dir: Path, method: str) -> dict:
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert {k: saved[k] for k in EXTRA_FIELDS - {"tuning"}} == {k: metrics[k] for k in EXTRA_FIELDS - {"tuning"}}
    assert STANDARD_FIELDS | EXTRA_FIELDS <= set(saved)
    assert saved["method"] == method and saved["split"] == "test" and saved["classes"] == CLASSES
    assert saved["mean_auroc"] is None or 0.0 <= saved["mean_auroc"] <= 1.0
    assert 0 < saved["trainable_parameters"] < saved["total_parameters"]
    assert saved["seconds"] >= saved["train_seconds"]
    tensors = load_file(str(run_dir / "checkpoint.safetensors"))
    # bias trains for siglip only
    assert (
        sum(v.size for k, v in tensors.items() if not k.endswith(("positive", "negative", "logit_bias")))
        == saved["trainable_parameters"]
    )
    assert json.loads((run_dir / "config.json").read_text())["train_config"]["method"] == saved["tuning"]["method"]
    return saved


def invoke(*args) -> str:
    """Run ``retune ARGS`` in-process; returns stdout, failing the test with all output on a non-zero exit."""
    result = CliRunner().invoke(app, [str(arg) for arg in args], env={"COLUMNS": "1000"})
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result.stdout


def test_lora_on_the_image_tower_then_evaluate_and_predict_from_the_cli(work, nih_csv):
    """``retune peft run`` trains, ``retune evaluate`` reproduces its test metrics from the checkpoint, ``retune
    predict`` scores images."""
    run_dir = work / "lora"
    config_file = work / "lora.yaml"
    config_file.write_text(yaml.safe_dump(experiment(work, nih_csv, rank=4, alpha=8).model_dump(mode="json")))
    invoke("peft", "run", "--config", config_file, "--method", "lora", "--out", run_dir)
    saved = check_run(json.loads((run_dir / "metrics.json").read_text()), run_dir, "peft-lora")
    assert saved["trainable_percent"] < 3
    assert saved["tuning"]["frozen_blocks"] == {"image": 0} and saved["tuning"]["prefix_cache"] is None
    evaluated = json.loads(invoke("evaluate", "--run", run_dir, "--data", nih_csv, "--n-bootstrap", "50", "--json"))
    assert evaluated["method"] == "peft-lora" and evaluated["n_images"] == saved["n_images"]
    assert evaluated["mean_auroc"] == pytest.approx(saved["mean_auroc"], abs=1e-6)
    images = pd.read_csv(nih_csv)["path"].head(4).tolist()
    invoke("predict", *images, "--run", run_dir, "--output", work / "lora-predictions.parquet")
    predictions = pd.read_parquet(work / "lora-predictions.parquet")
    assert list(predictions.columns) == ["image", *CLASSES] and len(predictions) == 4
    assert ((predictions[CLASSES] >= 0) & (predictions[CLASSES] <= 1)).all().all()
    print(
        f"\nLoRA r=4 image tower: {saved['trainable_parameters']} trainable ({saved['trainable_percent']}%), "
        f"peak {saved['peak_memory_mb']} MB, train {saved['train_seconds']} s"
    )


def test_freeze_first_five_stages_with_cached_prefix(work, nih_csv):
    config = experiment(work, nih_csv, method="freeze", freeze_blocks=5, epochs=2)
    run_dir = work / "freeze"
    saved = check_run(run_peft_experiment(config, run_dir), run_dir, "freeze-k")
    assert saved["tuning"]["frozen_blocks"] == {"image": 5} and saved["tuning"]["blocks"]["image"] == 7
    assert saved["tuning"]["prefix_cache"]["n_computed"] == N_ROWS and saved["tuning"]["prefix_cache"][
        "activation_shape"
    ] == [112, 14, 14]

    comparison = compare_prefix_caching(config)
    assert comparison["prefix_cache"]["n_computed"] == 0  # filled by the run above
    np.testing.assert_allclose(comparison["cached_train_loss"], comparison["uncached_train_loss"], rtol=5e-3)
    np.testing.assert_allclose(comparison["cached_train_loss"], saved["training"]["train_loss"], rtol=1e-6)
    # conv results differ by ~1e-6 relative with batch composition (cache batches vs shuffled minibatches); AdamW on
    # 3.7M unfrozen weights amplifies that to ~1e-2 in test probabilities after 2 epochs, never more than a few %
    assert comparison["max_test_score_difference"] < 0.03
    (work / "freeze" / "prefix_cache_speed.json").write_text(json.dumps(comparison))
    print(
        f"\nfreeze-k5: {saved['trainable_percent']}% trainable; cached {comparison['cached_train_seconds']} s vs "
        f"uncached {comparison['uncached_train_seconds']} s (x{comparison['speedup']}); peak "
        f"{comparison['cached_peak_memory_mb']} vs {comparison['uncached_peak_memory_mb']} MB; growth "
        f"{comparison['cached_memory_growth_mb']} vs {comparison['uncached_memory_growth_mb']} MB"
    )
