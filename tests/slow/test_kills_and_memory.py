"""The reliability suite that needs real processes: ``kill -9`` loops of ``retune embed`` and ``retune scenario
run``, and the peak memory of ``retune embed`` on hostile files. Marked slow (a few minutes together);
``make test`` and CI run them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from retune.data.phantoms import dicom_dataset, write_phantom_dataset

pytestmark = pytest.mark.slow

RETUNE = [sys.executable, "-m", "retune.cli"]
ENV = {**os.environ, "COLUMNS": "1000"}  # rich wraps at 80 columns without a terminal
PEAK_RSS_LIMIT_MB = 1536
N_KILLED_EMBED = 48


def start(*args: str | Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*RETUNE, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )


def deflated_dicom(path: Path, side: int) -> Path:
    """A deflated DICOM of ``side`` x ``side`` 16-bit pixels: a few hundred KB on disk, side^2 x 2 bytes inflated."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = dicom_dataset(
        np.zeros((side, side), dtype=np.uint16), transfer_syntax=DeflatedExplicitVRLittleEndian, Modality="CT"
    )
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.timeout(600)
def test_embed_on_hostile_rows_finishes_in_bounded_time_and_memory(tmp_path):
    """A directory, a FIFO, /dev/zero, a 20000 x 1 PNG and a deflated 12000^2 DICOM beside good phantoms:
    every bad row recorded, the good ones embedded, peak RSS under 1.5 GB, no hang."""
    csv = write_phantom_dataset(tmp_path / "data", n=4, seed=0, size=64)
    root = csv.parent
    (root / "folder").mkdir()
    os.mkfifo(root / "fifo.png")
    Image.new("L", (20000, 1)).save(root / "strip.png")
    deflated_dicom(root / "deflated.dcm", 12000)
    frame = pd.read_csv(csv, dtype=str)
    bad = ["folder", "fifo.png", "/dev/zero", "strip.png", "deflated.dcm"]
    extra = pd.concat([frame.iloc[[0]]] * len(bad), ignore_index=True).assign(
        path=bad, patient_id=[f"x{i}" for i in range(len(bad))]
    )
    pd.concat([frame, extra]).to_csv(root / "hostile.csv", index=False)
    store = tmp_path / "store"
    measure = (
        "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
    )
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            measure,
            *RETUNE,
            "embed",
            str(root / "hostile.csv"),
            "--store",
            str(store),
            "--allow-outside-root",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    seconds = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    peak_mb = int(done.stdout.strip().splitlines()[-1]) / 1024
    assert peak_mb < PEAK_RSS_LIMIT_MB, f"peak RSS {peak_mb:.0f} MB"
    assert "Traceback" not in done.stderr and seconds < 300
    errors = pd.concat(pd.read_csv(p) for p in (store / "errors").glob("*.csv"))
    assert len(errors) == len(bad) and "4 computed" in done.stdout


def store_rows(store: Path) -> list[str]:
    return [
        key
        for shard in sorted(store.glob("images/fp=*/part-*.parquet"))
        for key in pq.read_table(shard).column("content_hash").to_pylist()
    ]


# The CLI's embedding loop with 4-image shards (the CLI flushes every 512 images or 30 s), so that a kill lands
# between shards of a few dozen phantoms.
EMBED_IN_SMALL_SHARDS = (
    "import sys; from retune.backbones.registry import create_backbone; from retune.data.readers import read_table; "
    "from retune.store import EmbeddingStore; from retune.store.embed import embed_table; "
    "embed_table(read_table(sys.argv[1]), create_backbone('default', device='cpu'), EmbeddingStore(sys.argv[2]), "
    "batch_size=4, workers=0, shard_size=4, show_progress=False)"
)


@pytest.mark.timeout(900)
def test_embed_killed_mid_encoding_resumes_to_one_row_per_distinct_image(tmp_path):
    """kill -9 of the embedding loop once its first shard is on disk and before it finishes (checked: killed by
    the signal, some but not all images stored), then `retune embed`: it reuses every stored row, computes only the
    rest, and the store holds each distinct image once (two byte-identical files count once), manifest valid."""
    csv = write_phantom_dataset(tmp_path / "data", n=N_KILLED_EMBED, seed=1, size=32)
    frame = pd.read_csv(csv, dtype=str)
    duplicate = frame.iloc[[0]].assign(path="images/same_bytes.png", patient_id="dup")
    (csv.parent / "images" / "same_bytes.png").write_bytes((csv.parent / frame["path"].iloc[0]).read_bytes())
    pd.concat([frame, duplicate]).to_csv(csv, index=False)
    store = tmp_path / "store"
    process = subprocess.Popen([sys.executable, "-c", EMBED_IN_SMALL_SHARDS, str(csv), str(store)], env=ENV)
    try:
        deadline = time.monotonic() + 300
        while not store_rows(store):
            assert process.poll() is None, "the embedding loop ended before writing a shard"
            assert time.monotonic() < deadline, "no finished shard after 300 s"
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, f"embedding was not killed mid-run (exit {process.returncode})"
    before = len(store_rows(store))
    assert 0 < before < N_KILLED_EMBED

    final = start("embed", csv, "--store", store, "--workers", "0")
    try:
        out, err = final.communicate(timeout=600)
    finally:
        final.kill()
    assert final.returncode == 0, err
    summary = re.search(r"(\d+) rows, (\d+) unique images: (\d+) cached, (\d+) computed", out)
    assert summary, out
    assert [int(value) for value in summary.groups()] == [
        N_KILLED_EMBED + 1, N_KILLED_EMBED, before, N_KILLED_EMBED - before
    ]
    rows = store_rows(store)
    assert len(rows) == len(set(rows)) == N_KILLED_EMBED
    assert json.loads((store / "manifest.json").read_text())["format_version"] == 1


def scenario_file(tmp_path: Path, csv: Path) -> Path:
    spec = {
        "name": "kill-loop",
        "store": str(tmp_path / "store"),
        "data": {"csv": str(csv)},
        "generate": {"kind": "class", "n_tasks": 2},
        "methods": ["naive", "lwf"],
        "n_bootstrap": 50,
        "retune": {"optim": {"epochs": 8, "min_epochs": 1, "patience": 8}},
    }
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def finished_tasks(out: Path) -> int:
    return len(list((out / "work").glob("*/order*/task*/done.json")))


def reached(out: Path, boundary: int, every_task: int) -> bool:
    """Whether a run has finished ``boundary`` tasks; past the last task, whether it has started logging to MLflow."""
    return (out / "mlruns").exists() if boundary > every_task else finished_tasks(out) >= boundary


@pytest.mark.timeout(900)
def test_scenario_killed_at_every_task_boundary_and_during_logging_resumes_exactly(tmp_path):
    """naive and lwf, 2 tasks each: a process is killed after lwf's first task (naive finished, lwf half done), the
    next while logging to MLflow; the resumed results.json are byte for byte those of an uninterrupted run, with one
    MLflow run per method. (tests/scenarios/test_resume_exact.py resumes after every task boundary in-process.)"""
    csv = write_phantom_dataset(tmp_path / "data", n=80, seed=2, size=64)
    config = scenario_file(tmp_path, csv)
    reference = start("scenario", "run", config, "--out", tmp_path / "reference")
    assert reference.wait(timeout=600) == 0, reference.stderr.read()
    out = tmp_path / "killed"
    every_task = finished_tasks(tmp_path / "reference")
    for boundary in (every_task - 1, every_task + 1):  # inside lwf after naive finished; then while logging
        process = start("scenario", "run", config, "--out", out)
        while process.poll() is None and not reached(out, boundary, every_task):
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.communicate()
    resumed = start("scenario", "run", config, "--out", out)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    for method in ("naive", "lwf"):
        assert (out / method / "results.json").read_bytes() == (
            tmp_path / "reference" / method / "results.json"
        ).read_bytes()
    runs = [p for p in (out / "mlruns").glob("*/*/meta.yaml") if "lifecycle_stage: active" in p.read_text()]
    assert len(runs) == 2
