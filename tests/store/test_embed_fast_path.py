"""The faster embedding path writes what the plain one writes: same decoded bytes, same store."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from test_store import FakeBackbone, embed, phantom_source, phantoms  # noqa: F401 (fixtures)

from retune.data.images import DEFAULT_LIMITS, _scale_to_uint8


@pytest.mark.parametrize(
    ("dtype", "low", "high"),
    [(np.uint16, 0, 4096), (np.uint16, 300, 65536), (np.int16, -1024, 3072), (np.uint8, 0, 256),
     (np.int32, 5, 70_000), (np.uint32, 3_000_000_000, 3_000_050_000)],
)
def test_integer_images_scale_to_the_bytes_of_the_float_formula(dtype, low, high):
    """12/16-bit and signed DICOM-like pixels through the lookup table equal the float64 formula, byte for byte
    (int32 with more levels than the table holds takes the float path; uint32 levels far above 65535 take the
    shifted table, not one indexed by their values)."""
    pixels = np.random.default_rng(0).integers(low, high, size=(700, 800)).astype(dtype)  # 2+ lookup blocks
    np.testing.assert_array_equal(_scale_to_uint8(pixels), _scale_to_uint8(pixels.astype(np.float64)))


def test_a_constant_integer_image_scales_to_zeros():
    assert not _scale_to_uint8(np.full((300, 300), 7, dtype=np.uint16)).any()


def test_a_store_written_with_decoding_workers_equals_one_written_without(phantoms, tmp_path):  # noqa: F811
    """Worker decoding, other batch sizes and shard sizes: same content hashes, vectors within 1e-5."""
    from retune.data.readers import read_table
    from retune.store import EmbeddingStore, image_embeddings

    plain, fast = EmbeddingStore(tmp_path / "plain"), EmbeddingStore(tmp_path / "fast")
    backbone = FakeBackbone()
    embed(phantoms, backbone, plain, workers=0, batch_size=1)
    embed(phantoms, backbone, fast, workers=2, batch_size=5, shard_size=7)
    assert plain.keys("images", backbone.fingerprint) == fast.keys("images", backbone.fingerprint)
    table = read_table(phantoms)
    plain_vectors, plain_rows = image_embeddings(table, backbone.fingerprint, plain)
    fast_vectors, fast_rows = image_embeddings(table, backbone.fingerprint, fast)
    np.testing.assert_array_equal(plain_rows, fast_rows)
    np.testing.assert_allclose(fast_vectors, plain_vectors, atol=1e-5, rtol=0)


class CallLogging(FakeBackbone):
    """Appends "pid images" per encoder call to a file, so that calls made in DataLoader workers are seen too."""

    def __init__(self, log: Path) -> None:
        super().__init__()
        self.log = log

    def encode_images(self, pixels, tokens=False):
        with self.log.open("a") as handle:
            handle.write(f"{os.getpid()} {len(pixels)}\n")
        return super().encode_images(pixels, tokens)


def logged_calls(log: Path) -> list[tuple[int, int]]:
    return [tuple(map(int, line.split())) for line in log.read_text().splitlines()]


def test_on_cpu_the_workers_encode_in_calls_of_at_most_the_chunk(phantoms, tmp_path):  # noqa: F811
    """With two workers on CPU, both workers encode (never this process), no call holds more than
    ``CPU_ENCODE_CHUNK`` images whatever the batch size, and every image is encoded once."""
    from retune.store import EmbeddingStore
    from retune.store.embed import CPU_ENCODE_CHUNK

    backbone = CallLogging(tmp_path / "calls.log")
    summary = embed(phantoms, backbone, EmbeddingStore(tmp_path / "store"), workers=2, batch_size=32)
    calls = logged_calls(backbone.log)
    assert {pid for pid, _ in calls} - {os.getpid()} == {pid for pid, _ in calls} and len({p for p, _ in calls}) == 2
    assert max(n for _, n in calls) <= CPU_ENCODE_CHUNK < summary.n_computed == sum(n for _, n in calls)


@pytest.mark.parametrize(
    ("decode_ms", "one_thread_ms", "all_threads_ms", "pipelines", "expected"),
    [(9.0, 12.0, 5.0, 2, True), (1.2, 12.0, 5.0, 2, False), (1.2, 11.3, 5.1, 2, False), (1.2, 12.0, 5.0, 8, True),
     (15.0, 20.0, 20.0, 1, False)],
)
def test_pipelines_win_only_when_their_throughput_is_higher(decode_ms, one_thread_ms, all_threads_ms, pipelines,
                                                           expected):
    """2 cores, 1024 px PNG-like costs: pipelines; 256 px-like (cheap decoding): in turn with every thread, also
    where pipelines look 1% faster on the probe (the margin), until there are enough cores; one pipeline is never
    faster than decoding and encoding in turn at the same speed."""
    from retune.store.embed import CpuCosts

    assert CpuCosts(decode_ms, one_thread_ms, all_threads_ms).pipelines_win(pipelines) is expected


@pytest.mark.parametrize(("pipelines_win", "tokens"), [(True, False), (False, False), (True, True)])
def test_a_calibrated_job_stores_what_an_uncalibrated_one_does(
    phantoms, tmp_path, monkeypatch, pipelines_win, tokens  # noqa: F811
):
    """Whichever plan the measured costs pick, the probe's images and the rest are stored once (tokens too), equal
    to the vectors of a job without workers; the plan's choice is logged."""
    import retune.store.embed as embed_module
    from retune.data.readers import read_table
    from retune.store import EmbeddingStore, image_embeddings

    monkeypatch.setattr(embed_module, "CALIBRATE_FROM", 1)
    monkeypatch.setattr(embed_module.CpuCosts, "pipelines_win", lambda self, pipelines: pipelines_win)
    backbone = FakeBackbone()
    calibrated, plain = EmbeddingStore(tmp_path / "calibrated"), EmbeddingStore(tmp_path / "plain")
    summary = embed(phantoms, backbone, calibrated, workers=None, tokens=tokens)
    embed(phantoms, backbone, plain, workers=0, tokens=tokens)
    kinds = ["images", "tokens"] if tokens else ["images"]
    for kind in kinds:
        assert calibrated.keys(kind, backbone.fingerprint) == plain.keys(kind, backbone.fingerprint)
    assert summary.n_computed == len(plain.keys("images", backbone.fingerprint)) > 2 * embed_module.CPU_ENCODE_CHUNK
    table = read_table(phantoms)
    np.testing.assert_allclose(image_embeddings(table, backbone.fingerprint, calibrated)[0],
                               image_embeddings(table, backbone.fingerprint, plain)[0], atol=1e-5, rtol=0)


def test_an_explicit_worker_count_is_kept_whatever_the_probe_would_say(phantoms, tmp_path, monkeypatch):  # noqa: F811
    """``workers=2`` means two pipelines even on a job big enough to calibrate and with costs that favour encoding
    in turn: this process never encodes."""
    import retune.store.embed as embed_module
    from retune.store import EmbeddingStore

    monkeypatch.setattr(embed_module, "CALIBRATE_FROM", 1)
    monkeypatch.setattr(embed_module.CpuCosts, "pipelines_win", lambda self, pipelines: False)
    backbone = CallLogging(tmp_path / "calls.log")
    embed(phantoms, backbone, EmbeddingStore(tmp_path / "store"), workers=2)
    assert os.getpid() not in {pid for pid, _ in logged_calls(backbone.log)}


def test_a_probe_whose_images_do_not_decode_gives_no_costs_and_keeps_the_failures(tmp_path):
    """Unreadable probe images: no costs to choose by (the default plan stays), every image reported failed."""
    from retune.store.embed import measure_cpu_costs

    probe = [(f"hash{i}", str(tmp_path / f"missing{i}.png")) for i in range(8)]
    costs, batches = measure_cpu_costs(probe, FakeBackbone(), tokens=False, limits=DEFAULT_LIMITS)
    assert costs is None
    assert sorted(key for batch in batches for key, _ in batch.failed) == sorted(key for key, _ in probe)


class BrokenEncoder(FakeBackbone):
    """Encodes nothing: every call raises what it was given, as a model bug or a shape mismatch would."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def encode_images(self, pixels, tokens=False):
        raise self.error


@pytest.mark.parametrize("error", [RuntimeError("mat1 and mat2 shapes"), ConnectionResetError("mat1 and mat2 peer")])
def test_an_encoder_error_in_a_worker_fails_the_job_and_is_not_taken_for_a_killed_worker(
    phantoms, tmp_path, error  # noqa: F811
):
    """On CPU the workers encode; an exception there (even one that looks like a dropped connection) must reach
    the caller, not become 'an embedding worker died' failures recorded for every image."""
    from retune.store import EmbeddingStore

    with pytest.raises(type(error), match="mat1 and mat2"):
        embed(phantoms, BrokenEncoder(error), EmbeddingStore(tmp_path / "store"), workers=2)
