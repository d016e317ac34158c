"""``retune peft run --nproc 2``: LoRA trained by two CPU processes (DDP over gloo) on real NIH images, loading back
with ``retune evaluate`` like a single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from retune.cli import app

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_two_process_lora_run_writes_one_run_that_evaluate_loads(nih_head_csv, tmp_path: Path):
    csv_path = nih_head_csv(80, tmp_path / "nih80.csv")
    config = tmp_path / "lora.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "store": str(tmp_path / "store"),
                "data": {
                    "csv": str(csv_path),
                    "classes": ["Atelectasis", "Effusion", "No_Finding"],
                    "allow_outside_root": True,
                },
                "method": "lora",
                "rank": 4,
                "alpha": 8,
                "epochs": 1,
                "batch_size": 8,
                "n_bootstrap": 20,
                "device": "cpu",
            }
        )
    )
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "1000"}
    command = [
        sys.executable,
        "-m",
        "retune.cli",
        "peft",
        "run",
        "--config",
        str(config),
        "--out",
        str(run_dir),
        "--nproc",
        "2",
        "--json",
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert finished.returncode == 0, finished.stderr[-3000:]
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["tuning"]["processes"] == {"world_size": 2, "backend": "gloo"}
    assert saved["method"] == "peft-lora" and saved["split"] == "test"
    result = CliRunner().invoke(
        app, ["evaluate", "--run", str(run_dir), "--data", str(csv_path), "--n-bootstrap", "20", "--json"]
    )
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout)
    assert evaluated["method"] == "peft-lora" and evaluated["n_images"] == saved["n_images"]
    assert evaluated["mean_auroc"] == pytest.approx(saved["mean_auroc"], abs=1e-6)
