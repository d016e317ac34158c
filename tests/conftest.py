"""Shared fixtures: where the real data lives (and the skip-or-fail rule for it), and the session's one tiny phantom
training run and scenario that every test reading a run or scenario folder shares."""

from __future__ import annotations

import os
from dataclasses import dataclass
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


@pytest.fixture(autouse=True)
def verbosity_restored():
    """The CLI passes its --verbose choice on in RETUNE_VERBOSE (for child processes): every test starts with the
    session's value, whatever the test before it invoked."""
    saved = os.environ.get("RETUNE_VERBOSE")
    yield
    if saved is None:
        os.environ.pop("RETUNE_VERBOSE", None)
    else:
        os.environ["RETUNE_VERBOSE"] = saved


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


@dataclass(frozen=True)
class PhantomRun:
    """The session's tiny `retune train` run: its folder (``run``, named ``phantom-run``), the phantom CSV and the
    store the run embedded into, the training config it ran with, and ``root`` for sibling outputs."""

    root: Path
    csv: Path
    store: Path
    config: Path
    run: Path


@pytest.fixture(scope="session")
def phantom_run(tmp_path_factory) -> PhantomRun:
    """ONE `retune train` run (CLI) on 60 phantoms with the default backbone, RE-tune + linear probe, 5 epochs at
    lr 0.001, 50 bootstrap replicates, built once per session for every test that reads a trained run."""
    from typer.testing import CliRunner

    from retune.cli import app
    from retune.data.phantoms import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantom")
    csv = write_phantom_dataset(root / "phantoms", n=60, seed=3)
    config = root / "train.yaml"
    config.write_text("n_bootstrap: 50\nbaselines: [linear_probe]\nmin_positives: 1\n")  # 60 phantoms: few positives
    run = root / "phantom-run"
    options = ["--config", str(config), "--epochs", "5", "--lr", "0.001", "--json"]
    result = CliRunner().invoke(
        app, ["train", "--data", str(csv), "--out", str(run), "--store", str(root / "store"), *options]
    )
    assert result.exit_code == 0, result.output
    return PhantomRun(root, csv, root / "store", config, run)


@pytest.fixture(scope="session")
def phantom_scenario(phantom_run: PhantomRun) -> Path:
    """ONE `retune scenario run` output folder (``retune.api.run_scenario``, MLflow tracking on): 2 cheap methods x 2
    training seeds, 2 class-incremental tasks, on the phantom run's data and store (already embedded)."""
    import retune

    out = phantom_run.root / "phantom-scenario"
    config = {
        "name": "phantom-scenario",
        "data": {"csv": str(phantom_run.csv)},
        "store": str(phantom_run.store),
        "generate": {"kind": "class", "n_tasks": 2},
        "methods": ["simplecil", "naive"],
        "seeds": [0, 1],
        "n_bootstrap": 10,
        "min_positives": 2,
        "retune": {"optim": {"epochs": 5, "min_epochs": 2}},
    }
    retune.run_scenario(config, out)
    return out


@pytest.fixture(scope="session")
def strict_run(phantom_run: PhantomRun) -> dict[str, Path]:
    """`retune train` on the phantom run's data and store with min_positives 3: the headline mean covers fewer
    classes than are defined."""
    from typer.testing import CliRunner

    from retune.cli import app

    root = phantom_run.root / "strict"
    root.mkdir()
    config = root / "train.yaml"
    config.write_text("n_bootstrap: 20\nbaselines: [linear_probe]\nmin_positives: 3\n")
    out = root / "run"
    store = phantom_run.store
    command = ["train", "--data", str(phantom_run.csv), "--out", str(out), "--store", str(store)]
    result = CliRunner().invoke(app, [*command, "--config", str(config), "--epochs", "5"])
    assert result.exit_code == 0, result.output
    return {"root": root, "csv": phantom_run.csv, "run": out, "store": store, "config": config}
