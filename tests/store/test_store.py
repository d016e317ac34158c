"""The content-keyed embedding store and the embedding job, with a tiny fake backbone on phantom images."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageOps

from retune.backbones.base import Backbone, Encoded
from retune.data.phantoms import write_phantom_dataset
from retune.data.readers import read_table
from retune.errors import StoreError
from retune.store import EmbeddingStore, embed_table, image_embeddings, purge_store, text_embeddings, text_hash

N = 24
SIDE = 16
PATCH = 8  # 2 x 2 patches of 8 x 8 pixels -> 4 tokens
DIM = 8
TEXT_DIM = 6


class FakeBackbone(Backbone):
    """Resize to 16x16, project 8x8 patches with a fixed random matrix; texts become hash-derived vectors."""

    spec = "fake"
    aligned = False
    image_dim = DIM
    text_dim = TEXT_DIM

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(1234)
        self.projection = torch.randn(3 * PATCH * PATCH, DIM, generator=generator)
        self.image_calls = 0
        self.images_encoded = 0
        self.text_calls = 0
        self.texts_encoded = 0

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        array = np.asarray(image.convert("RGB").resize((SIDE, SIDE)), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def encode_images(self, pixels: torch.Tensor, tokens: bool = False) -> Encoded:
        self.image_calls += 1
        self.images_encoded += len(pixels)
        n = len(pixels)
        patches = pixels.unfold(2, PATCH, PATCH).unfold(3, PATCH, PATCH)  # N x 3 x 2 x 2 x 8 x 8
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(n, 4, 3 * PATCH * PATCH)
        token_vectors = patches @ self.projection  # N x 4 x DIM
        return Encoded(token_vectors.mean(dim=1), token_vectors if tokens else None)

    def encode_texts(self, texts: list[str], tokens: bool = False) -> Encoded:
        self.text_calls += 1
        self.texts_encoded += len(texts)
        rows = []
        for text in texts:
            digest = hashlib.sha256(text.encode()).digest()
            rows.append(np.frombuffer(digest[:TEXT_DIM], dtype=np.uint8).astype(np.float32) / 255.0)
        return Encoded(torch.from_numpy(np.stack(rows)))

    def fingerprint_parts(self) -> dict:
        return {"family": "fake", "version": 1}


@pytest.fixture(scope="module")
def phantom_source(tmp_path_factory) -> Path:
    """24 phantoms written once per module (copied per test, since tests modify files)."""
    return write_phantom_dataset(tmp_path_factory.mktemp("phantoms-src"), n=N, seed=0).parent


@pytest.fixture
def phantoms(tmp_path, phantom_source) -> Path:
    """A private copy of the phantom folder; returns its labels.csv."""
    target = tmp_path / "phantoms"
    shutil.copytree(phantom_source, target)
    return target / "labels.csv"


@pytest.fixture
def backbone() -> FakeBackbone:
    return FakeBackbone()


@pytest.fixture
def store(tmp_path) -> EmbeddingStore:
    return EmbeddingStore(tmp_path / "store")


def embed(csv_path: Path, backbone: Backbone, store: EmbeddingStore, **kwargs):
    """embed_table on a freshly read CSV, in-process decoding, no progress bar."""
    kwargs.setdefault("workers", 0)
    return embed_table(read_table(csv_path), backbone, store, show_progress=False, **kwargs)


def add_rows(csv_path: Path, paths: list[str], name: str = "extended.csv") -> Path:
    """A copy of ``csv_path`` (same folder) with extra all-negative rows for ``paths``."""
    frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    extra = pd.DataFrame(
        [
            {**{column: "0" for column in frame.columns}, "path": path, "patient_id": f"extra-{i}", "report": ""}
            for i, path in enumerate(paths)
        ]
    )
    target = csv_path.parent / name
    pd.concat([frame, extra], ignore_index=True).to_csv(target, index=False)
    return target


def stored_hashes(store: EmbeddingStore, fingerprint: str, kind: str = "images") -> list[str]:
    """Every content hash in the shards, duplicates included."""
    keys, _ = store.read_vectors(kind, fingerprint)
    return keys


def test_second_run_computes_nothing(phantoms, backbone, store):
    """A first run computes all N images, a second computes 0 and the store holds exactly N rows."""
    first = embed(phantoms, backbone, store)
    assert (first.n_rows, first.n_unique_images, first.n_computed, first.n_cached) == (N, N, N, 0)
    assert backbone.images_encoded == N
    second = embed(phantoms, backbone, store)
    assert (second.n_computed, second.n_cached) == (0, N)
    assert backbone.images_encoded == N
    keys = stored_hashes(store, backbone.fingerprint)
    assert len(keys) == N and len(set(keys)) == N
    assert store.summary()["rows"][backbone.fingerprint]["images"] == N
    assert store.manifest["backbones"][backbone.fingerprint]["spec"] == "fake"


def test_duplicate_files_embedded_once(phantoms, backbone, store):
    """The same bytes under two paths are encoded once, and both rows get the same vector."""
    images = phantoms.parent / "images"
    shutil.copyfile(images / "phantom_00000.png", images / "copy_of_0.png")
    csv_path = add_rows(phantoms, ["images/copy_of_0.png"])
    summary = embed(csv_path, backbone, store)
    assert (summary.n_rows, summary.n_unique_images, summary.n_computed) == (N + 1, N, N)
    assert backbone.images_encoded == N
    assert len(stored_hashes(store, backbone.fingerprint)) == N
    matrix, rows = image_embeddings(read_table(csv_path), backbone.fingerprint, store)
    assert list(rows) == list(range(N + 1))
    np.testing.assert_array_equal(matrix[0], matrix[N])


def test_renamed_file_not_reencoded(phantoms, backbone, store):
    """Renaming an image (same bytes, new path) is a cache hit: nothing is encoded again."""
    embed(phantoms, backbone, store)
    images = phantoms.parent / "images"
    os.rename(images / "phantom_00003.png", images / "renamed.png")
    frame = pd.read_csv(phantoms, dtype=str, keep_default_na=False)
    frame.loc[3, "path"] = "images/renamed.png"
    frame.to_csv(phantoms, index=False)
    summary = embed(phantoms, backbone, store)
    assert summary.n_computed == 0 and summary.n_cached == N
    assert backbone.images_encoded == N
    assert len(stored_hashes(store, backbone.fingerprint)) == N


def test_modified_file_is_reencoded(phantoms, backbone, store):
    """Changing a file's bytes in place makes exactly that image be encoded again."""
    embed(phantoms, backbone, store)
    target = phantoms.parent / "images" / "phantom_00005.png"
    before = target.stat()
    ImageOps.invert(Image.open(target).convert("L")).save(target)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns + 2_000_000_000))
    summary = embed(phantoms, backbone, store)
    assert summary.n_computed == 1
    assert backbone.images_encoded == N + 1
    keys = stored_hashes(store, backbone.fingerprint)
    assert len(keys) == N + 1 and len(set(keys)) == N + 1


def test_killed_run_leaves_whole_shards_and_resumes(phantoms, backbone, store, monkeypatch):
    """A run that dies after its first shard (plus a leftover temp file) resumes to N unique rows."""
    original = EmbeddingStore.write_vectors
    calls = []

    class Killed(Exception):
        pass

    def dying_write(self, *args, **kwargs):
        calls.append(args[0])
        if len(calls) > 1:
            raise Killed("simulated kill")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(EmbeddingStore, "write_vectors", dying_write)
    with pytest.raises(Killed):
        embed(phantoms, backbone, store, batch_size=4, shard_size=4)
    monkeypatch.undo()
    fingerprint = backbone.fingerprint
    shard_dir = store.shard_dir("images", fingerprint)
    assert len(store.shards("images", fingerprint)) == 1
    first_rows = len(stored_hashes(store, fingerprint))
    assert first_rows == 4
    # What a kill -9 in the middle of a parquet write leaves behind: a half-written temp file.
    (shard_dir / ".tmp-part-19700101000000-deadbeef.parquet-abc123").write_bytes(b"PAR1 half a shard")

    resumed = embed(phantoms, backbone, store, batch_size=4, shard_size=4)
    assert resumed.n_computed == N - first_rows
    assert resumed.n_cached == first_rows
    keys = stored_hashes(store, fingerprint)
    assert len(keys) == N and len(set(keys)) == N
    assert store.summary()["rows"][fingerprint]["images"] == N
    assert len(pd.read_parquet(store.root / "images")) == N


def test_unreadable_images_are_recorded_and_skipped(phantoms, backbone, store):
    """A zero-byte file, a truncated PNG and random bytes are listed with path + reason in summary and STORE/errors."""
    images = phantoms.parent / "images"
    (images / "empty.png").write_bytes(b"")
    good = (images / "phantom_00000.png").read_bytes()
    (images / "truncated.png").write_bytes(good[: len(good) // 2])
    (images / "random.png").write_bytes(np.random.default_rng(0).bytes(4096))
    csv_path = add_rows(phantoms, ["images/empty.png", "images/truncated.png", "images/random.png"])
    summary = embed(csv_path, backbone, store)
    assert summary.n_computed == N
    assert len(stored_hashes(store, backbone.fingerprint)) == N
    reasons = dict(zip(summary.errors["path"], summary.errors["reason"]))
    expected = {str((images / name).resolve()) for name in ("empty.png", "truncated.png", "random.png")}
    assert set(reasons) == expected
    assert all(isinstance(reason, str) and reason.strip() for reason in reasons.values())
    assert "empty" in reasons[str((images / "empty.png").resolve())]
    assert summary.errors_file.parent == store.root / "errors"
    written = list((store.root / "errors").glob("*.csv"))
    assert written == [summary.errors_file]
    on_disk = pd.read_csv(written[0])
    assert list(on_disk.columns) == ["path", "reason"]
    assert set(on_disk["path"]) == expected
    assert "failed" in summary.line() and str(summary.errors_file) in summary.line()


def test_every_path_of_duplicate_unreadable_files_is_reported(phantoms, backbone, store):
    """Two distinct paths with the same broken bytes are both named in summary.errors."""
    images = phantoms.parent / "images"
    (images / "empty_a.png").write_bytes(b"")
    (images / "empty_b.png").write_bytes(b"")
    csv_path = add_rows(phantoms, ["images/empty_a.png", "images/empty_b.png"])
    summary = embed(csv_path, backbone, store)
    assert set(summary.errors["path"]) == {
        str((images / "empty_a.png").resolve()),
        str((images / "empty_b.png").resolve()),
    }


def test_tokens_are_stored(phantoms, backbone, store):
    """tokens=True stores a T*D token row per image next to the pooled vector."""
    summary = embed(phantoms, backbone, store, tokens=True)
    assert summary.n_computed == N
    fingerprint = backbone.fingerprint
    keys, tokens = store.read_vectors("tokens", fingerprint)
    assert len(keys) == N and tokens.shape == (N, 4 * DIM)
    pooled_keys, pooled = store.read_vectors("images", fingerprint, keys)
    np.testing.assert_allclose(tokens.reshape(N, 4, DIM).mean(axis=1), pooled, rtol=1e-5, atol=1e-6)
    table = pd.read_parquet(store.shard_dir("tokens", fingerprint))
    assert set(table["n_tokens"]) == {4}
    again = embed(phantoms, backbone, store, tokens=True)
    assert again.n_computed == 0


def test_adding_tokens_later_does_not_duplicate_pooled_rows(phantoms, backbone, store):
    """Embedding pooled-only, then again with tokens=True, keeps exactly N pooled rows (one per content hash)."""
    embed(phantoms, backbone, store)
    later = embed(phantoms, backbone, store, tokens=True)
    assert later.n_computed == N  # the tokens had to be computed
    assert len(store.read_vectors("tokens", backbone.fingerprint)[0]) == N
    keys = stored_hashes(store, backbone.fingerprint)
    assert len(keys) == len(set(keys)) == N


def test_read_vectors_follows_requested_order(phantoms, backbone, store):
    """read_vectors with keys returns exactly those rows in that order; an unknown key is a StoreError."""
    embed(phantoms, backbone, store, batch_size=7, shard_size=7)  # several shards
    fingerprint = backbone.fingerprint
    assert len(store.shards("images", fingerprint)) > 1
    keys, matrix = store.read_vectors("images", fingerprint)
    by_key = dict(zip(keys, matrix))
    wanted = [keys[i] for i in (17, 2, 23, 0, 2)]
    got_keys, got = store.read_vectors("images", fingerprint, wanted)
    assert got_keys == wanted
    np.testing.assert_array_equal(got, np.stack([by_key[k] for k in wanted]))
    assert not np.array_equal(got[0], got[1])
    with pytest.raises(StoreError, match="1 of 2"):
        store.read_vectors("images", fingerprint, [keys[0], "0" * 64])


def test_text_embeddings_are_cached(backbone, store):
    """text_embeddings encodes each distinct text once; a second call encodes nothing."""
    texts = ["Enlarged heart.", "Normal heart size.", "Enlarged heart.", "Small left effusion."]
    first = text_embeddings(texts, backbone, store)
    assert first.shape == (4, TEXT_DIM)
    assert backbone.texts_encoded == 3
    np.testing.assert_array_equal(first[0], first[2])
    calls = backbone.text_calls
    second = text_embeddings(texts, backbone, store)
    assert backbone.text_calls == calls and backbone.texts_encoded == 3
    np.testing.assert_array_equal(first, second)
    text_embeddings(["Normal heart size.", "No pneumothorax."], backbone, store)
    assert backbone.texts_encoded == 4
    table = pd.read_parquet(store.shard_dir("texts", backbone.fingerprint))
    assert len(table) == 4 and set(table["text_hash"]) == {text_hash(t) for t in set(texts) | {"No pneumothorax."}}


def test_shards_are_plain_parquet(phantoms, backbone, store):
    """pandas and Polars read the image shards as they are: N rows of DIM-wide float vectors."""
    import polars as pl

    embed(phantoms, backbone, store, batch_size=10, shard_size=10)
    frame = pd.read_parquet(store.root / "images")
    assert len(frame) == N
    assert {len(vector) for vector in frame["embedding"]} == {DIM}
    assert frame["content_hash"].nunique() == N
    polars_frame = pl.read_parquet(str(store.root / "images" / "*" / "*.parquet"))
    assert polars_frame.height == N
    assert polars_frame["embedding"].to_numpy().shape == (N, DIM)
    _, matrix = store.read_vectors("images", backbone.fingerprint, list(polars_frame["content_hash"]))
    np.testing.assert_array_equal(polars_frame["embedding"].to_numpy(), matrix)


def test_purge_store_deletes_store_and_refuses_other_folders(phantoms, backbone, store, tmp_path):
    """purge_store removes a store (returning bytes freed) and refuses a folder without a manifest."""
    embed(phantoms, backbone, store)
    freed = purge_store(store.root)
    assert freed > 0 and not store.root.exists()
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match="refusing"):
        purge_store(other)
    assert (other / "notes.txt").read_text() == "keep me"


def test_open_missing_store_without_create(tmp_path):
    """EmbeddingStore(path, create=False) on a missing folder raises StoreError and creates nothing."""
    missing = tmp_path / "nowhere"
    with pytest.raises(StoreError, match="no embedding store"):
        EmbeddingStore(missing, create=False)
    assert not missing.exists()
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(StoreError, match="manifest"):
        EmbeddingStore(plain, create=False)


def test_lock_refuses_second_writer(phantoms, backbone, store):
    """While one writer holds the store lock, another lock or embedding run fails with StoreError."""
    second = EmbeddingStore(store.root)
    with store.lock():
        with pytest.raises(StoreError, match="another process"):
            with second.lock():
                pass
        with pytest.raises(StoreError, match="another process"):
            embed(phantoms, backbone, second)
    with second.lock():  # released again
        pass
    assert embed(phantoms, backbone, second).n_computed == N


def test_store_ignores_foreign_shard_names(phantoms, backbone, store):
    """Only finished part-*.parquet files are read: valid Parquet copies under temp or other names add no rows."""
    embed(phantoms, backbone, store)
    folder = store.shard_dir("images", backbone.fingerprint)
    (shard,) = store.shards("images", backbone.fingerprint)
    for name in (".tmp-part-x.parquet-123", "copy.parquet", "part-copy.parquet.bak"):
        (folder / name).write_bytes(shard.read_bytes())
    assert len(stored_hashes(store, backbone.fingerprint)) == N
    assert store.summary()["rows"][backbone.fingerprint]["images"] == N
