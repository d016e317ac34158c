"""Content-keyed embedding store: Parquet shards per backbone fingerprint, plus a JSON manifest.

Layout (every file is plain Parquet or JSON that pandas, Polars and Ray read as they are)::

    STORE/manifest.json                          format version, backbones, row counts
    STORE/images/fp=<fingerprint>/part-*.parquet  content_hash, embedding (float32 list)
    STORE/tokens/fp=<fingerprint>/part-*.parquet  content_hash, tokens (float32 list, T*D), n_tokens
    STORE/texts/fp=<fingerprint>/part-*.parquet   text_hash, text, embedding
    STORE/prefix/fp=<fingerprint>-k<K>/part-*.parquet  content_hash, activation (frozen first-K-block output, flat)
    STORE/text_tokens/fp=<fingerprint>/part-*.parquet  text_hash, tokens (max_tokens*D, zero-padded), n_tokens
    STORE/dense/fp=<fingerprint>-dense<S>/part-*.parquet  content_hash, features (float16 multi-scale maps, flat)
    STORE/files/part-*.parquet                    path, size, mtime_ns, content_hash (hash cache)
    STORE/errors/embed-*.csv                      images that could not be read, with the reason

Shards are the truth; each is written to a temp file and renamed, so a killed run leaves whole
shards only and a rerun computes just what is missing. The store holds data derived from patient
images (embeddings and file paths): treat it like the images, and delete it with ``purge``.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from retune.errors import DataError, StoreError
from retune.io_utils import atomic_path, read_json, write_json_atomic

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KINDS = ("images", "tokens", "texts", "text_tokens", "prefix", "dense")
_KEY_COLUMN = {
    "prefix": "content_hash",
    "images": "content_hash",
    "tokens": "content_hash",
    "texts": "text_hash",
    "text_tokens": "text_hash",
    "dense": "content_hash",
}
_VECTOR_COLUMN = {
    "prefix": "activation",
    "images": "embedding",
    "tokens": "tokens",
    "texts": "embedding",
    "text_tokens": "tokens",
    "dense": "features",
}


def text_hash(text: str) -> str:
    """Key of a prompt or report in the text table."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _vector_array(matrix: np.ndarray) -> pa.FixedSizeListArray:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def _matrix(column: pa.ChunkedArray, width: int) -> np.ndarray:
    if column.num_chunks == 0 or len(column) == 0:
        return np.zeros((0, width), dtype=np.float32)
    flat = pa.concat_arrays([chunk.flatten() for chunk in column.chunks])
    return flat.to_numpy(zero_copy_only=False).reshape(len(column), width)


class EmbeddingStore:
    """A folder of cached embeddings keyed by (backbone fingerprint, content hash)."""

    persistent = True  # what it is given is kept on disk (``MemoryOverlay`` is the in-memory counterpart)

    def __init__(self, root: str | os.PathLike, create: bool = True) -> None:
        self.root = Path(root)
        if not self.root.exists():
            if not create:
                raise StoreError(f"{self.root}: no embedding store here (run 'retune embed' first)")
            with _writing(self.root, "create the store"):
                self.root.mkdir(parents=True)
        elif not self.root.is_dir():
            raise StoreError(f"{self.root}: not a directory")
        manifest = self.root / MANIFEST
        if manifest.exists():
            self.manifest = self._read_manifest(manifest)
        elif create:
            self.manifest = {"format_version": FORMAT_VERSION, "backbones": {}, "created": time.time()}
            with _writing(self.root, "create the store"):
                write_json_atomic(manifest, self.manifest)
        else:
            raise StoreError(f"{self.root}: missing {MANIFEST}; not a retune embedding store")

    @staticmethod
    def _read_manifest(path: Path) -> dict:
        try:
            manifest = read_json(path)
        except DataError as error:
            raise StoreError(f"unreadable manifest: {error}") from None
        if not isinstance(manifest, dict):
            raise StoreError(f"{path}: not a store manifest (expected a JSON object)")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{path}: store format {manifest.get('format_version')} is not {FORMAT_VERSION}")
        return manifest

    # -- bookkeeping -------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock so two writers never interleave shards of one store (and purge never deletes under one).

        A held lock or a store that cannot be written (read-only) is a one-line StoreError.
        """
        with _exclusive(self.root, "write to the store"):
            self.refresh_manifest()  # another process (a DDP rank) may have registered backbones since we read it
            yield

    def needs_backbone(self, description: dict) -> bool:
        """Whether the manifest lacks this backbone description (compared in its JSON form: tuples are lists there)."""
        return self.manifest["backbones"].get(description["fingerprint"]) != _as_json(description)

    def refresh_manifest(self) -> None:
        """Read the manifest again from disk: what other processes wrote since this store was opened."""
        self.manifest = self._read_manifest(self.root / MANIFEST)

    def register_backbone(self, description: dict) -> None:
        """Record which backbone a fingerprint stands for (shown by ``retune store info``); writes only on change."""
        if self.needs_backbone(description):
            self.manifest["backbones"][description["fingerprint"]] = _as_json(description)
            self._save_manifest()

    def _save_manifest(self) -> None:
        self.manifest["updated"] = time.time()
        with _writing(self.root, "update the store's manifest"):
            write_json_atomic(self.root / MANIFEST, self.manifest)

    def shard_dir(self, kind: str, fingerprint: str) -> Path:
        return self.root / kind / f"fp={fingerprint}"

    def shards(self, kind: str, fingerprint: str) -> list[Path]:
        """Finished shards (temp files of an interrupted write are ignored)."""
        folder = self.shard_dir(kind, fingerprint)
        return sorted(folder.glob("part-*.parquet")) if folder.exists() else []

    def _write_shard(self, folder: Path, table: pa.Table) -> Path:
        target = folder / f"part-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
        with atomic_path(target) as temp:
            pq.write_table(table, temp, compression="none", use_dictionary=False)
        return target

    # -- vectors -----------------------------------------------------------------------------
    def keys(self, kind: str, fingerprint: str) -> set[str]:
        """Every key (content or text hash) already stored for a backbone."""
        column = _KEY_COLUMN[kind]
        keys: set[str] = set()
        for shard in self.shards(kind, fingerprint):
            keys.update(pq.read_table(shard, columns=[column], memory_map=True).column(column).to_pylist())
        return keys

    def write_vectors(
        self, kind: str, fingerprint: str, keys: list[str], vectors: np.ndarray, **extra_columns: list
    ) -> Path:
        """Append one shard of vectors (rows of ``vectors`` match ``keys``)."""
        if len(keys) != len(vectors):
            raise ValueError("keys and vectors differ in length")
        columns = {
            _KEY_COLUMN[kind]: pa.array(keys, pa.string()),
            _VECTOR_COLUMN[kind]: _vector_array(vectors.reshape(len(keys), -1)),
        }
        columns.update({name: pa.array(values) for name, values in extra_columns.items()})
        return self._write_shard(self.shard_dir(kind, fingerprint), pa.table(columns))

    def read_vectors(
        self, kind: str, fingerprint: str, keys: list[str] | None = None, dtype: type = np.float32
    ) -> tuple[list[str], np.ndarray]:
        """Stored keys and their vectors (memory-mapped reads); with ``keys``, rows in that order.

        ``dtype=np.float16`` converts shard by shard into a half-size matrix, for training under bf16 autocast
        (whose matmuls round their inputs more coarsely than float16 does). A key absent from the store raises
        StoreError naming how many are missing.
        """
        shards = self.shards(kind, fingerprint)
        key_column, vector_column = _KEY_COLUMN[kind], _VECTOR_COLUMN[kind]
        if not shards:
            if keys:
                raise StoreError(f"{self.root}: no {kind} stored for backbone {fingerprint}; run 'retune embed' first")
            return [], np.zeros((0, 0), dtype=dtype)
        # Keys first, matched in Arrow (no Python object per stored key), then each shard's vectors straight into
        # one preallocated matrix: peak memory is the result plus one shard, never a second copy of the store.
        shard_keys = [pq.read_table(s, columns=[key_column], memory_map=True).column(key_column) for s in shards]
        offsets = np.cumsum([0] + [len(column) for column in shard_keys])
        stored = pa.chunked_array([chunk for column in shard_keys for chunk in column.chunks], pa.string())
        wanted = list(keys) if keys is not None else stored.to_pylist()
        # a key stored twice: index_in finds the first copy, which wins
        positions = pc.index_in(pa.array(wanted, pa.string()), value_set=stored.combine_chunks())
        absent = positions.is_null().to_numpy(zero_copy_only=False)
        if absent.any():
            missing = len(set(np.asarray(wanted, dtype=object)[absent]))
            raise StoreError(
                f"{self.root}: {missing} of {len(set(wanted))} requested {kind} are not in the store (backbone "
                f"{fingerprint})"
            )
        positions = positions.to_numpy(zero_copy_only=False).astype(np.int64)
        order = np.argsort(positions, kind="stable")
        bounds = np.searchsorted(positions[order], offsets)
        width = pq.read_schema(shards[0]).field(vector_column).type.list_size
        result = np.empty((len(wanted), width), dtype=dtype)
        for index, shard in enumerate(shards):
            targets = order[bounds[index]:bounds[index + 1]]
            if len(targets):
                column = pq.read_table(shard, columns=[vector_column], memory_map=True).column(vector_column)
                result[targets] = _matrix(column, width)[positions[targets] - offsets[index]]
        return wanted, result

    def read_column(self, kind: str, fingerprint: str, column: str, keys: list[str]) -> np.ndarray:
        """One extra column (e.g. ``n_tokens``) for ``keys``, in that order; absent keys raise StoreError."""
        key_column = _KEY_COLUMN[kind]
        shards = self.shards(kind, fingerprint)
        if not shards:
            raise StoreError(f"{self.root}: no {kind} stored for backbone {fingerprint}")
        table = pa.concat_tables(pq.read_table(s, columns=[key_column, column], memory_map=True) for s in shards)
        position = {key: row for row, key in enumerate(table.column(key_column).to_pylist())}
        missing = [key for key in keys if key not in position]
        if missing:
            raise StoreError(
                f"{self.root}: {len(missing)} of {len(keys)} requested {kind} are not in the store (backbone "
                f"{fingerprint})"
            )
        return table.column(column).to_numpy()[[position[key] for key in keys]]

    # -- file hash cache ---------------------------------------------------------------------
    def cached_file_hashes(self) -> dict[tuple[str, int, int], str]:
        """(path, size, mtime_ns) -> content hash, so unchanged files are not re-read."""
        folder = self.root / "files"
        cache: dict[tuple[str, int, int], str] = {}
        for shard in sorted(folder.glob("part-*.parquet")) if folder.exists() else []:
            table = pq.read_table(shard, memory_map=True).to_pydict()
            cache.update(zip(zip(table["path"], table["size"], table["mtime_ns"]), table["content_hash"]))
        return cache

    def record_file_hashes(self, rows: list[tuple[str, int, int, str]]) -> None:
        """Append newly hashed files to the hash cache; a read-only store skips it (the cache only saves rereads)."""
        if not rows or not os.access(self.root, os.W_OK):
            return
        paths, sizes, mtimes, hashes = zip(*rows)
        table = pa.table(
            {
                "path": pa.array(paths, pa.string()),
                "size": pa.array(sizes, pa.int64()),
                "mtime_ns": pa.array(mtimes, pa.int64()),
                "content_hash": pa.array(hashes, pa.string()),
            }
        )
        self._write_shard(self.root / "files", table)

    # -- maintenance -------------------------------------------------------------------------
    def summary(self) -> dict:
        """Row counts and bytes on disk per kind and backbone."""
        counts: dict[str, dict[str, int]] = {}
        for kind in KINDS:
            for folder in sorted((self.root / kind).glob("fp=*")) if (self.root / kind).exists() else []:
                fingerprint = folder.name.removeprefix("fp=")
                rows = sum(pq.ParquetFile(shard).metadata.num_rows for shard in self.shards(kind, fingerprint))
                counts.setdefault(fingerprint, {})[kind] = rows
        size = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        return {"root": str(self.root), "bytes": size, "rows": counts, "backbones": self.manifest["backbones"]}


def purge_store(root: str | os.PathLike) -> int:
    """Delete a whole store (patient-derived data); returns bytes freed. Refuses non-store folders, and stores
    whose writer lock is held (an ``embed`` still running)."""
    root = Path(root)
    if not (root / MANIFEST).exists():
        raise StoreError(f"{root}: not a retune embedding store (no {MANIFEST}); refusing to delete it")
    with _exclusive(root, "delete the store", busy="a process is writing to this store; refusing to purge it now"):
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        with _writing(root, "delete the store"):
            shutil.rmtree(root)
    return size


@contextmanager
def _exclusive(root: Path, action: str, busy: str = "another process is writing to this store") -> Iterator[None]:
    """Hold the store's ``.lock`` (flock, non-blocking) for the block; StoreError(``busy``) when it is held, and
    a one-line StoreError when the lock file cannot be opened to ``action`` (a read-only store)."""
    with _writing(root, action):
        handle = open(root / ".lock", "a")
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise StoreError(f"{root}: {busy}") from error
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _writing(root: Path, action: str) -> Iterator[None]:
    """Turn a permission or read-only file-system error into one line naming the store and the action."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise StoreError(f"{root}: cannot {action} ({error.strerror}); the store is read-only here") from error


def _as_json(value: dict) -> dict:
    """``value`` as it reads back from JSON (tuples become lists), so comparisons with the manifest are fair."""
    return json.loads(json.dumps(value, default=str))
