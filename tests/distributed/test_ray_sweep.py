"""``scenario run --engine ray`` on a real local Ray instance: identical results.json numbers to a sequential run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from retune.cli import app
from retune.data.phantoms import write_phantom_dataset

runner = CliRunner()
METHODS = ["retune", "linear_probe", "naive"]


@pytest.mark.slow
def test_ray_sweep_writes_the_sequential_runs_numbers(ray_local, tmp_path):
    """3 methods x 3 orders as Ray tasks give the local engine's results.json, from one shared store."""
    csv_path = write_phantom_dataset(tmp_path / "phantoms", n=60, seed=0)
    spec = {
        "name": "phantom-orders",
        "store": str(tmp_path / "store"),
        "data": {"csv": str(csv_path)},
        "generate": {"kind": "class", "n_tasks": 2},
        "methods": METHODS,
        "orders": [0, 1, 2],
        "n_bootstrap": 20,
        "retune": {"optim": {"epochs": 15, "min_epochs": 5}},
    }
    config = tmp_path / "scenario.yaml"
    config.write_text(yaml.safe_dump(spec))
    for engine in ("local", "ray"):
        result = runner.invoke(
            app, ["scenario", "run", str(config), "--out", str(tmp_path / engine), "--engine", engine]
        )
        assert result.exit_code == 0, result.output
    for method in METHODS:
        local, distributed = (
            json.loads((tmp_path / engine / method / "results.json").read_text()) for engine in ("local", "ray")
        )
        assert [order["order"] for order in distributed["orders"]] == [0, 1, 2]
        assert distributed == local
    assert len({json.dumps(order["auroc_matrix"]) for order in local["orders"]}) == 3  # the orders really differ


def test_address_without_ray_engine_is_refused(tmp_path: Path):
    result = runner.invoke(
        app, ["scenario", "run", str(tmp_path / "missing.yaml"), "--out", str(tmp_path), "--address", "auto"]
    )
    assert result.exit_code == 2 and "--address needs --engine ray" in result.output
