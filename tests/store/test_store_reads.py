"""EmbeddingStore.read_vectors: rows in the requested order across shards, without a second copy of the store."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from retune.errors import StoreError
from retune.store import EmbeddingStore


@pytest.fixture
def filled(tmp_path):
    """Six keys in three shards."""
    store = EmbeddingStore(tmp_path / "store")
    vectors = np.arange(6 * 3, dtype=np.float32).reshape(6, 3)
    store.write_vectors("images", "fp", ["k0", "k1", "k2"], vectors[:3])
    store.write_vectors("images", "fp", ["k3", "k4"], vectors[3:5])
    store.write_vectors("images", "fp", ["k5"], vectors[5:])
    return store, vectors


def test_read_vectors_follows_the_requested_order_and_repeats(filled):
    store, vectors = filled
    keys, matrix = store.read_vectors("images", "fp", ["k4", "k1", "k0", "k4", "k5"])
    assert keys == ["k4", "k1", "k0", "k4", "k5"]
    np.testing.assert_array_equal(matrix, vectors[[4, 1, 0, 4, 5]])


def test_read_vectors_without_keys_returns_every_stored_row(filled):
    store, vectors = filled
    keys, matrix = store.read_vectors("images", "fp")
    assert sorted(keys) == ["k0", "k1", "k2", "k3", "k4", "k5"]
    np.testing.assert_array_equal(matrix, vectors[[int(key[1]) for key in keys]])


def test_a_key_stored_twice_reads_its_first_copy_everywhere(filled):
    """Shards are read in name order; the copy in the first shard that holds the key wins, for every row."""
    store, _ = filled
    store.write_vectors("images", "fp", ["k1"], np.full((1, 3), -1, dtype=np.float32))
    first = next(
        table for table in (pq.read_table(shard).to_pydict() for shard in store.shards("images", "fp"))
        if "k1" in table["content_hash"]
    )
    expected = first["embedding"][first["content_hash"].index("k1")]
    keys, matrix = store.read_vectors("images", "fp")
    assert keys.count("k1") == 2
    np.testing.assert_array_equal(matrix[np.array(keys) == "k1"], [expected, expected])
    np.testing.assert_array_equal(store.read_vectors("images", "fp", ["k1"])[1], [expected])


def test_read_vectors_names_how_many_keys_are_missing(filled):
    store, _ = filled
    with pytest.raises(StoreError, match="2 of 4 requested images are not in the store"):
        store.read_vectors("images", "fp", ["k0", "nope", "gone", "nope", "k3"])


def test_read_vectors_as_float16_converts_each_row_in_order(filled):
    """The half-size read used for bf16 training: same rows, same order, values rounded to float16."""
    store, vectors = filled
    vectors = vectors * 1.001  # not exactly representable in float16: the conversion itself is checked
    store.write_vectors("images", "fp2", ["a", "b"], vectors[:2])
    store.write_vectors("images", "fp2", ["c"], vectors[2:3])
    keys, matrix = store.read_vectors("images", "fp2", ["c", "a"], dtype=np.float16)
    assert keys == ["c", "a"] and matrix.dtype == np.float16
    np.testing.assert_array_equal(matrix, vectors[[2, 0]].astype(np.float16))
