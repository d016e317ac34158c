"""A store view that reads through to an embedding store (if any) and keeps everything new in memory.

``retune predict`` / ``evaluate`` use it unless ``--cache`` is given, so scoring new images adds no embeddings,
content hashes or file paths of those images to disk: the store holds only what the user chose to cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from retune.errors import StoreError
from retune.store.store import EmbeddingStore


class MemoryOverlay:
    """The parts of ``EmbeddingStore`` that embedding and scoring use; writes stay in this object."""

    persistent = False

    def __init__(self, base: EmbeddingStore | None) -> None:
        self.base = base
        self.root = base.root if base is not None else Path("(memory)")
        self._vectors: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        self._hashes: dict[tuple[str, int, int], str] = {}

    def needs_backbone(self, description: dict) -> bool:
        """Never: the overlay records no backbone (it is thrown away after use)."""
        return False

    def register_backbone(self, description: dict) -> None:
        """Nothing to record: the overlay is thrown away after use."""

    @contextmanager
    def lock(self) -> Iterator[None]:
        yield

    def cached_file_hashes(self) -> dict[tuple[str, int, int], str]:
        return {**(self.base.cached_file_hashes() if self.base else {}), **self._hashes}

    def record_file_hashes(self, rows: list[tuple[str, int, int, str]]) -> None:
        self._hashes.update({(path, size, mtime): value for path, size, mtime, value in rows})

    def keys(self, kind: str, fingerprint: str) -> set[str]:
        stored = self.base.keys(kind, fingerprint) if self.base else set()
        return stored | set(self._vectors.get((kind, fingerprint), {}))

    def write_vectors(
        self, kind: str, fingerprint: str, keys: list[str], vectors: np.ndarray, **extra_columns: list
    ) -> None:
        self._vectors.setdefault((kind, fingerprint), {}).update(
            zip(keys, np.asarray(vectors, dtype=np.float32).reshape(len(keys), -1))
        )

    def read_vectors(self, kind: str, fingerprint: str, keys: list[str]) -> tuple[list[str], np.ndarray]:
        """Vectors for ``keys`` in that order, from memory first, then from the base store."""
        memory = self._vectors.get((kind, fingerprint), {})
        on_disk = [key for key in dict.fromkeys(keys) if key not in memory]
        if on_disk:
            if self.base is None:
                raise StoreError(f"{len(on_disk)} requested {kind} are neither in memory nor in a store")
            found, matrix = self.base.read_vectors(kind, fingerprint, on_disk)
            memory = {**memory, **dict(zip(found, matrix))}
        return list(keys), np.stack([memory[key] for key in keys]) if keys else np.zeros((0, 0), dtype=np.float32)
