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
