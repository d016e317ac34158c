"""Faults and hostile inputs in the embed job and the store: nothing hangs, one bad row never stops a run,
memory is bounded from headers, a dying decoder is recorded, reads never escape the image root, a
fully cached store is never written, purge respects the writer lock."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_store import FakeBackbone  # the tiny patch-projection backbone of the store tests

from retune.data.images import DecodeLimits, load_image
from retune.data.phantoms import dicom_dataset, png_claiming_size, write_phantom_dataset
from retune.data.readers import read_table
from retune.errors import DataError, StoreError
from retune.store import EmbeddingStore, embed_table, purge_store
from retune.store import store as store_module

N_GOOD = 6


@pytest.fixture
def phantom_csv(tmp_path) -> Path:
    return write_phantom_dataset(tmp_path / "data", n=N_GOOD, seed=0, size=32)


def with_rows(csv: Path, paths: list[str], name: str = "hostile.csv") -> Path:
    """``csv`` plus one row per extra path (patients p-extra-N, labels copied from the first row)."""
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    extra = pd.concat([frame.iloc[[0]]] * len(paths), ignore_index=True)
    extra["path"], extra["patient_id"] = paths, [f"p-extra-{i}" for i in range(len(paths))]
    target = csv.parent / name
    pd.concat([frame, extra]).to_csv(target, index=False)
    return target


def embed(csv: Path, store: EmbeddingStore, backbone=None, **kwargs):
    kwargs.setdefault("workers", 0)
    allow = kwargs.pop("allow_outside_root", False)
    return embed_table(
        read_table(csv, allow_outside_root=allow), backbone or FakeBackbone(), store, show_progress=False, **kwargs
    )


@pytest.mark.timeout(60)
def test_non_regular_files_are_recorded_and_the_good_rows_embedded(phantom_csv, tmp_path):
    """A directory, a FIFO (would block forever) and /dev/zero (endless) are recorded; the run goes on."""
    root = phantom_csv.parent
    (root / "a_folder").mkdir()
    os.mkfifo(root / "a_fifo.png")
    csv = with_rows(phantom_csv, ["a_folder", "a_fifo.png", "/dev/zero"])
    summary = embed(csv, EmbeddingStore(tmp_path / "store"), allow_outside_root=True)
    reasons = dict(zip(summary.errors["path"], summary.errors["reason"]))
    assert summary.n_computed == N_GOOD and len(reasons) == 3
    assert "a directory" in reasons[str(root.resolve() / "a_folder")]
    assert "not a regular file" in reasons[str(root.resolve() / "a_fifo.png")]
    assert "not a regular file" in reasons["/dev/zero"]


def test_permission_denied_row_is_recorded(phantom_csv, tmp_path, monkeypatch):
    """A file the process may not read (simulated for root, who reads everything) is one recorded row."""
    locked = phantom_csv.parent / "locked.png"
    Image.new("L", (32, 32)).save(locked)
    locked.chmod(0)
    if os.geteuid() == 0:
        real_open = Path.open

        def denied(self, *args, **kwargs):
            if self.name == "locked.png":
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", denied)
    summary = embed(with_rows(phantom_csv, ["locked.png"]), EmbeddingStore(tmp_path / "store"))
    assert summary.n_computed == N_GOOD and "permission denied" in summary.errors["reason"].iloc[0].lower()


def test_size_limit_applies_before_hashing(phantom_csv, tmp_path):
    big = phantom_csv.parent / "big.png"
    big.write_bytes(b"\x00" * 5000)
    summary = embed(
        with_rows(phantom_csv, ["big.png"]), EmbeddingStore(tmp_path / "store"), limits=DecodeLimits(max_bytes=4096)
    )
    assert summary.n_computed == N_GOOD
    assert "over the size limit of 4096 bytes" in summary.errors["reason"].iloc[0]


def test_pixel_budget_and_aspect_ratio_are_checked_from_the_header(tmp_path, recwarn):
    """A 20000 x 1 strip and a header claiming 30000 x 30000 pixels are refused before decoding, with no
    DecompressionBombWarning on stderr; the limits are configurable."""
    strip = tmp_path / "strip.png"
    Image.new("L", (20000, 1)).save(strip)
    with pytest.raises(DataError, match="more elongated than the limit"):
        load_image(strip)
    assert load_image(strip, DecodeLimits(max_aspect_ratio=30000)).size == (20000, 1)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming_size(30000, 30000))
    with pytest.raises(DataError, match="decompression bomb|over the pixel budget"):
        load_image(bomb)
    with pytest.raises(DataError, match="over the pixel budget of 100"):
        load_image(tmp_path / "strip.png", DecodeLimits(max_pixels=100, max_aspect_ratio=1e9))
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_dicom_pixel_budget_is_checked_before_the_pixel_data_is_read(tmp_path):
    # a header that promises 144 million pixels over 64 real ones
    ds = dicom_dataset(np.zeros((8, 8), dtype=np.uint16), Rows=12000, Columns=12000)
    ds.save_as(tmp_path / "huge.dcm", enforce_file_format=True)
    with pytest.raises(DataError, match="12000 x 12000 pixels is over the pixel budget"):
        load_image(tmp_path / "huge.dcm")


class KillsItsWorker(FakeBackbone):
    """Dies like an OOM-killed decoder on the one image that is 20 pixels wide."""

    def preprocess(self, image: Image.Image):
        if image.size[0] == 20:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().preprocess(image)


@pytest.mark.timeout(120)
def test_a_killed_decoding_worker_is_recorded_and_a_rerun_resumes(phantom_csv, tmp_path):
    Image.new("L", (20, 20)).save(phantom_csv.parent / "deadly.png")
    csv = with_rows(phantom_csv, ["deadly.png"])
    store = EmbeddingStore(tmp_path / "store")
    summary = embed(csv, store, KillsItsWorker(), workers=1, batch_size=2)
    assert len(summary.errors) >= 1 and summary.n_computed + len(summary.errors) == N_GOOD + 1
    assert all("embedding worker died" in reason for reason in summary.errors["reason"])
    rerun = embed(csv, store)  # a healthy decoder picks up exactly what is missing
    assert rerun.n_computed == len(summary.errors) and rerun.errors.empty


def test_shards_flush_on_a_time_budget(phantom_csv, tmp_path):
    store = EmbeddingStore(tmp_path / "store")
    backbone = FakeBackbone()
    embed(phantom_csv, store, backbone, batch_size=2, flush_seconds=0)
    assert (
        len(store.shards("images", backbone.fingerprint)) == N_GOOD // 2
    )  # one shard per batch, not one per 512 images


def test_symlink_out_of_the_root_is_refused_and_never_hashed(phantom_csv, tmp_path):
    secret = tmp_path / "secret.png"
    Image.new("L", (32, 32)).save(secret)
    (phantom_csv.parent / "link.png").symlink_to(secret)
    store = EmbeddingStore(tmp_path / "store")
    summary = embed(with_rows(phantom_csv, ["link.png"]), store)
    assert summary.n_computed == N_GOOD
    assert "outside the image root" in summary.errors["reason"].iloc[0]
    assert not any("link.png" in path or "secret" in path for path, _, _ in store.cached_file_hashes())


def tree_state(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


class TupleBackbone(FakeBackbone):
    """Describes itself with tuples, which read back from the manifest's JSON as lists."""

    def fingerprint_parts(self) -> dict:
        return {"family": "fake", "version": 1, "mean": (0.5, 0.5, 0.5)}


def test_a_fully_cached_store_is_never_written(phantom_csv, tmp_path, monkeypatch):
    """Once everything is embedded, embedding again (and reading vectors) leaves every file of the store untouched,
    even the lock and the manifest; a write that is needed on a read-only store is one line."""
    from retune.store import image_embeddings

    store_dir = tmp_path / "store"
    backbone = TupleBackbone()
    embed(phantom_csv, EmbeddingStore(store_dir), backbone)
    before = tree_state(store_dir)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(store_module, "write_json_atomic", read_only)
    monkeypatch.setattr(store_module, "open", read_only, raising=False)
    store = EmbeddingStore(store_dir, create=False)
    summary = embed(phantom_csv, store, backbone)
    image_embeddings(read_table(phantom_csv), backbone.fingerprint, store)
    assert summary.n_cached == N_GOOD and summary.n_computed == 0
    assert tree_state(store_dir) == before
    Image.new("L", (32, 32), 200).save(phantom_csv.parent / "new.png")
    with pytest.raises(
        StoreError, match=r"store: cannot write to the store \(Read-only file system\); the store is read-only"
    ):
        embed(with_rows(phantom_csv, ["new.png"]), store, backbone)


def test_purge_refuses_while_a_writer_holds_the_lock(tmp_path):
    store = EmbeddingStore(tmp_path / "store")
    with store.lock():
        with pytest.raises(StoreError, match="a process is writing to this store; refusing to purge it now"):
            purge_store(tmp_path / "store")
    assert (tmp_path / "store" / "manifest.json").exists()
    assert purge_store(tmp_path / "store") > 0 and not (tmp_path / "store").exists()
