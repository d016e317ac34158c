"""`retune peft run` leaves the same outputs as `retune train`: report.html, plots and decision thresholds."""

from __future__ import annotations

import json

from retune.config import PeftExperimentConfig, ReTuneConfig
from retune.data.phantoms import write_phantom_dataset
from retune.experiments.peft import run_peft_experiment


def test_peft_run_writes_report_plots_and_validation_thresholds(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    csv = write_phantom_dataset(tmp_path / "phantoms", n=24, seed=5, size=64)
    config = PeftExperimentConfig(
        store=tmp_path / "store",
        data={"csv": csv},
        epochs=1,
        batch_size=8,
        retune=ReTuneConfig(prompts="template", adaptor={"shared_dim": 8, "dropout": 0.0}),
        device="cpu",
        n_bootstrap=0,
        method="lora",
        rank=2,
        freeze_blocks=6,
    )
    run_peft_experiment(config, tmp_path / "run")
    report = (tmp_path / "run" / "report.html").read_text()
    assert "peft-lora" in report and "data:image/png;base64" in report
    assert (tmp_path / "run" / "roc_curves.png").is_file() and (tmp_path / "run" / "calibration.png").is_file()
    facts = json.loads((tmp_path / "run" / "config.json").read_text())
    assert "validation" in facts["threshold_rule"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["operating_points"]) == set(metrics["classes"])
