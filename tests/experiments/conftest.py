"""A `retune train` run on phantoms whose mean leaves classes out (min_positives 3), shared by these tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from retune.cli import app


@pytest.fixture(scope="session")
def strict_run(tmp_path_factory) -> dict[str, Path]:
    """`retune train` on 60 phantoms with min_positives 3: the headline mean covers fewer classes than are defined."""
    from retune.data.phantoms import write_phantom_dataset

    root = tmp_path_factory.mktemp("strict-run")
    csv = write_phantom_dataset(root / "phantoms", n=60, seed=3)
    config = root / "train.yaml"
    config.write_text("n_bootstrap: 20\nbaselines: [linear_probe]\nmin_positives: 3\n")
    out = root / "run"
    command = ["train", "--data", str(csv), "--out", str(out), "--store", str(root / "store"), "--config", str(config)]
    result = CliRunner().invoke(app, [*command, "--epochs", "5"])
    assert result.exit_code == 0, result.output
    return {"root": root, "csv": csv, "run": out, "store": root / "store", "config": config}
