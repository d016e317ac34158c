"""A tiny RE-tune run on synthetic phantoms (default backbone), trained once per session for the server tests."""

from __future__ import annotations

from pathlib import Path

import pytest

N_PHANTOMS = 40


@pytest.fixture(scope="session")
def phantom_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run directory, phantom CSV): ``retune train``'s API on 40 phantoms, 20 epochs, few bootstrap replicates."""
    from retune.config import TrainConfig
    from retune.data.phantoms import write_phantom_dataset
    from retune.experiments.train import train_run

    work = tmp_path_factory.mktemp("served-run")
    csv = write_phantom_dataset(work / "phantoms", n=N_PHANTOMS, seed=3)
    config = TrainConfig.model_validate(
        {
            "data": {"csv": str(csv)},
            "store": str(work / "store"),
            "n_bootstrap": 20,
            "min_positives": 1,  # 40 phantoms leave few test positives per finding
            "retune": {"optim": {"epochs": 20, "min_epochs": 5}},
        }
    )
    train_run(config, work / "phantom-run")
    return work / "phantom-run", csv


@pytest.fixture(scope="session")
def served_runs(phantom_run):
    """The phantom run opened once for every server test (as ``retune serve`` does at startup)."""
    from retune.server import load_served_runs

    return load_served_runs([phantom_run[0]])


@pytest.fixture(scope="session")
def phantom_scenario(phantom_run) -> Path:
    """A `retune scenario run` output folder: 2 cheap methods x 2 training seeds, 2 class-incremental tasks, on the
    served run's phantoms and store (already embedded, so no encoder pass)."""
    from retune.scenarios.runner import run_scenario
    from retune.scenarios.spec import ScenarioConfig

    run_dir, csv = phantom_run
    config = ScenarioConfig.model_validate(
        {
            "name": "phantom-scenario",
            "data": {"csv": str(csv)},
            "store": str(run_dir.parent / "store"),
            "generate": {"kind": "class", "n_tasks": 2},
            "methods": ["simplecil", "naive"],
            "seeds": [0, 1],
            "n_bootstrap": 10,
            "min_positives": 2,
            "retune": {"optim": {"epochs": 5, "min_epochs": 2}},
        }
    )
    out = run_dir.parent / "phantom-scenario"
    run_scenario(config, out)
    return out


@pytest.fixture(scope="session")
def served_scenarios(phantom_scenario):
    """The phantom scenario read once, heatmaps drawn (as ``retune serve`` does at startup)."""
    from retune.server import load_served_scenarios

    return load_served_scenarios([phantom_scenario])


@pytest.fixture(autouse=True, scope="session")
def loopback_test_clients():
    """Test clients call the server as a local browser or curl does, at http://127.0.0.1 (the server refuses other
    Host names without a token); a test may still pass another base_url."""
    from fastapi.testclient import TestClient

    original = TestClient.__init__

    def init(self, app, base_url: str = "http://127.0.0.1", *args, **kwargs):
        original(self, app, base_url, *args, **kwargs)

    TestClient.__init__ = init
    yield
    TestClient.__init__ = original
