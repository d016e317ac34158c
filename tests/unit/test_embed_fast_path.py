"""The faster embedding path writes what the plain one writes: same decoded bytes, same store."""

from __future__ import annotations

import numpy as np
import pytest
from test_store import FakeBackbone, embed, phantom_source, phantoms  # noqa: F401 (fixtures)

from retune.data.images import _scale_to_uint8


@pytest.mark.parametrize(
    ("dtype", "low", "high"),
    [(np.uint16, 0, 4096), (np.uint16, 300, 65536), (np.int16, -1024, 3072), (np.uint8, 0, 256),
     (np.int32, 5, 70_000), (np.uint32, 3_000_000_000, 3_000_050_000)],
)
def test_integer_images_scale_to_the_bytes_of_the_float_formula(dtype, low, high):
    """12/16-bit and signed DICOM-like pixels through the lookup table equal the float64 formula, byte for byte
    (int32 with more levels than the table holds takes the float path; uint32 levels far above 65535 take the
    shifted table, not one indexed by their values)."""
    pixels = np.random.default_rng(0).integers(low, high, size=(300, 400)).astype(dtype)
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


def test_on_cpu_each_worker_encodes_its_own_batches_of_at_most_the_chunk(phantoms, tmp_path):  # noqa: F811
    """With workers on CPU, encoding happens in the workers (this process's encoder is never called) and every
    encoder call holds at most ``CPU_ENCODE_CHUNK`` images; without workers, this process encodes them all."""
    from retune.store import EmbeddingStore
    from retune.store.embed import CPU_ENCODE_CHUNK

    in_workers, in_process = FakeBackbone(), FakeBackbone()
    summary = embed(phantoms, in_workers, EmbeddingStore(tmp_path / "workers"), workers=2, batch_size=32)
    assert summary.n_computed > CPU_ENCODE_CHUNK and in_workers.image_calls == 0
    embed(phantoms, in_process, EmbeddingStore(tmp_path / "process"), workers=0, batch_size=32)
    assert in_process.images_encoded == summary.n_computed
    assert in_process.image_calls == -(-summary.n_computed // CPU_ENCODE_CHUNK)
