"""The frozen-block activation cache: the image tower's first-k-block output per image, kept in the store (kind
``prefix``)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from retune.backbones.base import Backbone
from retune.data.pixels import decode_pixels
from retune.data.table import ImageTable
from retune.errors import DataError
from retune.store.embed import hash_files
from retune.store.store import EmbeddingStore

PREFIX_KIND = "prefix"


def prefix_fingerprint(backbone: Backbone, k: int) -> str:
    """Store key of the first-k-block activations: the backbone fingerprint plus k."""
    return f"{backbone.fingerprint}-k{k}"


@dataclass
class PrefixActivations:
    """Cached first-k-block activations for the readable rows of a table."""

    activations: torch.Tensor
    rows: np.ndarray
    n_computed: int
    fingerprint: str = ""
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason


def prefix_activations(
    table: ImageTable,
    backbone: Backbone,
    k: int,
    store: EmbeddingStore,
    compute: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 16,
    require_rows: bool = True,
) -> PrefixActivations:
    """Output of the image tower's first k blocks per row (``compute``: pixels -> activations), only what the store
    lacks.

    With no readable image: DataError, or with ``require_rows=False`` an empty result that lists the failures.
    """
    fingerprint = prefix_fingerprint(backbone, k)
    hashes, failures = hash_files(table.paths, store, confine_to=table.confined_root)
    computed = 0
    stored = store.keys(PREFIX_KIND, fingerprint)
    # the lock (a write) only when something is missing: a fully cached read-only store serves reads
    with store.lock() if set(hashes.values()) - stored else nullcontext():
        stored = store.keys(PREFIX_KIND, fingerprint)
        todo = {}
        for path, content_hash in hashes.items():
            if content_hash not in stored:
                todo.setdefault(content_hash, path)
        items = list(todo.items())
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            pixels = decode_pixels([path for _, path in batch], backbone)
            good = [(key, tensor) for (key, _), tensor in zip(batch, pixels) if tensor is not None]
            failures.update({path: "unreadable image" for (_, path), tensor in zip(batch, pixels) if tensor is None})
            if not good:
                continue
            activations = compute(torch.stack([t for _, t in good])).cpu()
            store.register_backbone(
                {
                    **backbone.describe(),
                    "fingerprint": fingerprint,
                    "prefix_blocks": k,
                    "activation_shape": list(activations.shape[1:]),
                }
            )
            store.write_vectors(PREFIX_KIND, fingerprint, [key for key, _ in good], activations.numpy())
            stored.update(key for key, _ in good)
            computed += len(good)
    rows = np.asarray([row for row, path in enumerate(table.paths) if hashes.get(path) in stored], dtype=int)
    if not len(rows):
        if require_rows:
            raise DataError(f"{table.source}: no readable image to compute first-{k}-block activations for")
        return PrefixActivations(torch.zeros(0), rows, computed, fingerprint, dict(sorted(failures.items())))
    if fingerprint not in store.manifest["backbones"]:  # cached by another process (a DDP rank) after we opened it
        store.refresh_manifest()
    shape = store.manifest["backbones"][fingerprint]["activation_shape"]
    _, flat = store.read_vectors(PREFIX_KIND, fingerprint, [hashes[table.paths[row]] for row in rows])
    return PrefixActivations(
        torch.from_numpy(np.ascontiguousarray(flat)).view(len(rows), *shape),
        rows,
        computed,
        fingerprint,
        dict(sorted(failures.items())),
    )
