"""``embed --engine ray`` on a real local Ray instance: the local engine's store, resumable, one-line faults."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from retune.backbones.registry import create_backbone
from retune.cli import app
from retune.data.phantoms import write_phantom_dataset
from retune.data.readers import read_table
from retune.errors import ConfigError
from retune.store import EmbeddingStore, embed_table

N = 20


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("default", device="cpu")


@pytest.fixture(scope="module")
def phantoms_with_broken_rows(tmp_path_factory) -> Path:
    """N phantoms plus an empty and a truncated PNG (rows that must land in the error table)."""
    csv_path = write_phantom_dataset(tmp_path_factory.mktemp("ray-phantoms"), n=N, seed=3)
    images = csv_path.parent / "images"
    good = (images / "phantom_00000.png").read_bytes()
    (images / "empty.png").write_bytes(b"")
    (images / "truncated.png").write_bytes(good[: len(good) // 2])
    frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    extra = frame.head(2).copy()
    extra["path"] = ["images/empty.png", "images/truncated.png"]
    extra["patient_id"] = ["broken-0", "broken-1"]
    pd.concat([frame, extra], ignore_index=True).to_csv(csv_path, index=False)
    return csv_path


def embed(csv_path: Path, backbone, store_dir: Path, engine: str, **kwargs):
    from retune.distributed.ray_embed import ray_encoder

    encoder = ray_encoder(actors=1) if engine == "ray" else None
    return embed_table(
        read_table(csv_path),
        backbone,
        EmbeddingStore(store_dir),
        batch_size=8,
        workers=0,
        show_progress=False,
        encoder=encoder,
        **kwargs,
    )


def stored(store_dir: Path, fingerprint: str, kind: str = "images") -> tuple[list[str], np.ndarray]:
    keys, matrix = EmbeddingStore(store_dir).read_vectors(kind, fingerprint)
    order = np.argsort(keys)
    return [keys[i] for i in order], matrix[order]


@pytest.mark.slow
def test_ray_engine_writes_the_local_engines_store(ray_local, backbone, phantoms_with_broken_rows, tmp_path, capfd):
    """Same content hashes, embeddings and tokens within 1e-5, same error table; a second Ray run computes 0."""
    local = embed(phantoms_with_broken_rows, backbone, tmp_path / "local", "local", tokens=True)
    distributed = embed(phantoms_with_broken_rows, backbone, tmp_path / "ray", "ray", tokens=True)
    assert "Execution plan" not in capfd.readouterr().err  # Ray Data's own lines only with retune --verbose
    assert (distributed.n_computed, distributed.n_unique_images) == (local.n_computed, local.n_unique_images)
    assert distributed.n_computed == N and len(distributed.errors) == 2  # both fail in Ray decode tasks
    for kind in ("images", "tokens"):
        local_keys, local_matrix = stored(tmp_path / "local", backbone.fingerprint, kind)
        ray_keys, ray_matrix = stored(tmp_path / "ray", backbone.fingerprint, kind)
        assert ray_keys == local_keys and len(set(ray_keys)) == N
        np.testing.assert_allclose(ray_matrix, local_matrix, atol=1e-5)
    pd.testing.assert_frame_equal(distributed.errors, local.errors)
    assert distributed.errors_file.parent == tmp_path / "ray" / "errors"
    assert (
        EmbeddingStore(tmp_path / "ray").manifest["backbones"]
        == EmbeddingStore(tmp_path / "local").manifest["backbones"]
    )
    store = str(tmp_path / "ray")
    command = ["embed", str(phantoms_with_broken_rows), "--store", store, "--engine", "ray"]
    again = CliRunner().invoke(app, command, env={"COLUMNS": "1000"})
    assert again.exit_code == 1, again.output  # 1: the two unreadable rows are listed again
    assert f"{N} cached, 0 computed" in again.output


@pytest.mark.slow
def test_interrupted_ray_run_resumes_without_loss_or_duplicates(
    ray_local, backbone, phantoms_with_broken_rows, tmp_path, monkeypatch
):
    """The driver dies after a few batches (some flushed, some in flight); a rerun computes exactly the rest."""
    from retune.distributed import ray_embed

    real = ray_embed.ray_encoder(actors=1)

    def dying(*args):
        for number, batch in enumerate(real(*args)):
            if number == 2:
                raise KeyboardInterrupt
            yield batch

    with pytest.raises(KeyboardInterrupt):
        embed_table(
            read_table(phantoms_with_broken_rows),
            backbone,
            EmbeddingStore(tmp_path / "store"),
            batch_size=4,
            shard_size=4,
            show_progress=False,
            encoder=dying,
        )
    first_keys, _ = stored(tmp_path / "store", backbone.fingerprint)
    assert 0 < len(first_keys) < N
    resumed = embed(phantoms_with_broken_rows, backbone, tmp_path / "store", "ray")
    assert resumed.n_computed == N - len(first_keys)
    keys, _ = stored(tmp_path / "store", backbone.fingerprint)
    assert len(keys) == len(set(keys)) == N


def test_missing_ray_says_how_to_install(monkeypatch):
    from retune.distributed.cluster import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"pip install 'retune\[ray\]'"):
        require_ray()


def test_unreachable_cluster_is_one_line_naming_it(monkeypatch):
    """An address nobody listens on fails in seconds (Ray alone retries for minutes), naming the address."""
    from retune.distributed import cluster

    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster, "REACH_TIMEOUT_S", 1.0)
    with pytest.raises(ConfigError, match=r"'127\.0\.0\.1:9' cannot be reached"):
        cluster.connect("127.0.0.1:9")
    with pytest.raises(ConfigError, match="expected auto, HOST:PORT"):
        cluster.connect("nonsense")
