"""Shared fixtures: where the real data lives, and the skip-or-fail rule for it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REQUIRE_SHARED = os.environ.get("RETUNE_REQUIRE_SHARED_DATA") == "1"


def _need(path: Path) -> Path:
    """Return ``path`` or skip the test with the reason; under CI (RETUNE_REQUIRE_SHARED_DATA=1) fail instead."""
    if path.exists():
        return path
    reason = f"real data not found at {path} (the project's ../shared/data); this test needs it"
    if REQUIRE_SHARED:
        pytest.fail(reason + " and RETUNE_REQUIRE_SHARED_DATA=1 forbids skipping")
    pytest.skip(reason)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tests train tiny models: one torch thread is fastest and does not fight other processes for cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ../shared/data folder (skips, or fails under CI, when absent)."""
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def nih_dir(shared_data: Path) -> Path:
    """The 1,599-image NIH ChestX-ray14 subset with labels.csv."""
    return _need(shared_data / "nih-cxr14")


@pytest.fixture(scope="session")
def label_tables(shared_data: Path) -> Path:
    """Real CheXpert / NIH label tables and the Open-i reports."""
    return _need(shared_data / "label-tables")


@pytest.fixture(scope="session")
def nih_head_csv(nih_dir: Path):
    """Writer of the first n NIH rows, image paths made absolute, to a CSV: ``nih_head_csv(n_rows, target) ->
    target`` (paths outside the CSV's folder: read it with ``allow_outside_root`` or ``--allow-outside-root``)."""
    import pandas as pd

    def write(n_rows: int, target: Path) -> Path:
        frame = pd.read_csv(nih_dir / "labels.csv", dtype=str, keep_default_na=False).head(n_rows)
        frame["path"] = [str((nih_dir / path).resolve()) for path in frame["path"]]
        target.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(target, index=False)
        return target

    return write


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance (2 CPUs, no dashboard), started once for every Ray test (start-up costs seconds)."""
    ray = pytest.importorskip("ray", reason="the Ray tests need the ray extra: pip install 'retune[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def strict_run(tmp_path_factory) -> dict[str, Path]:
    """`retune train` on 60 phantoms with min_positives 3: the headline mean covers fewer classes than are defined."""
    from typer.testing import CliRunner

    from retune.cli import app
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
