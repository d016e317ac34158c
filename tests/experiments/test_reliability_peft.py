"""`retune peft run` leaves what `retune train` leaves: report.html, plots, decision thresholds, and says where."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from retune.cli import app
from retune.data.phantoms import write_phantom_dataset

PEFT_YAML = """
data: {{csv: {csv}}}
store: {store}
epochs: 1
batch_size: 8
device: cpu
n_bootstrap: 0
method: lora
rank: 2
freeze_blocks: 6
retune: {{prompts: template, adaptor: {{shared_dim: 8, dropout: 0.0}}}}
"""


def test_peft_run_writes_report_plots_and_validation_thresholds(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    csv = write_phantom_dataset(tmp_path / "phantoms", n=24, seed=5, size=64)
    config = tmp_path / "peft.yaml"
    config.write_text(PEFT_YAML.format(csv=csv, store=tmp_path / "store"))
    out = tmp_path / "run"
    command = ["peft", "run", "--config", str(config), "--out", str(out)]
    result = CliRunner().invoke(app, command, env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert f"run saved to {out} (report.html" in result.stdout
    assert "statm" not in result.stdout and "above_start" not in result.stdout
    report = (out / "report.html").read_text()
    assert "peft-lora" in report and "data:image/png;base64" in report
    assert (out / "roc_curves.png").is_file() and (out / "calibration.png").is_file()
    assert "validation" in json.loads((out / "config.json").read_text())["threshold_rule"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["operating_points"]) == set(metrics["classes"])
