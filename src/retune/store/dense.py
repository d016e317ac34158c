"""Dense (multi-scale) feature maps of the frozen image tower, computed once per image and resolution and kept in the
store as float16 (kind ``dense``), so segmentation decoders train for any number of epochs without the encoder."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from retune.backbones.base import Backbone
from retune.data.images import load_image
from retune.errors import DataError
from retune.progress import progress_bar
from retune.store.embed import hash_files
from retune.store.store import EmbeddingStore

DENSE_KIND = "dense"


def dense_fingerprint(backbone: Backbone, size: int) -> str:
    """Store key of the dense maps: the backbone fingerprint plus the square input size they were computed at."""
    return f"{backbone.fingerprint}-dense{size}"


@dataclass
class DenseFeatures:
    """Cached multi-scale maps (float16, finest first) for every image of a list, in its order."""

    maps: list[torch.Tensor]  # per stride: images x channels x size/stride x size/stride
    strides: tuple[int, ...]
    content_hashes: list[str]
    n_computed: int  # images whose maps were computed by this call (the rest came from the store)
    fingerprint: str

    def rows(self, rows: np.ndarray) -> list[torch.Tensor]:
        """The maps of some images, as float32 (what a head trains on)."""
        index = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        return [feature_map[index].float() for feature_map in self.maps]


def dense_pixels(paths: list[str], backbone: Backbone, size: int) -> torch.Tensor:
    """Decode images and prepare them for ``Backbone.dense_features`` (a one-line DataError for an unreadable one)."""
    return torch.stack([backbone.dense_preprocess(load_image(path), size) for path in paths])


def dense_features(
    paths: list[str],
    backbone: Backbone,
    store: EmbeddingStore,
    size: int,
    batch_size: int = 8,
    show_progress: bool = False,
) -> DenseFeatures:
    """The dense maps of ``paths`` at ``size`` x ``size``: read from the store, computing (once) only the images it
    lacks. Keyed by image content, so a renamed or copied file is not encoded again."""
    fingerprint = dense_fingerprint(backbone, size)
    hashes, failures = hash_files(paths, store)
    if failures:
        path, reason = next(iter(failures.items()))
        raise DataError(f"{path}: {reason}")
    keys = [hashes[path] for path in paths]
    stored = store.keys(DENSE_KIND, fingerprint)
    todo = list({key: path for key, path in zip(keys, paths) if key not in stored}.items())
    with store.lock() if todo else nullcontext(), progress_bar(
        "dense features", len(todo), enabled=show_progress, unit="images"
    ) as advance:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            maps = backbone.dense_features(dense_pixels([path for _, path in batch], backbone, size))
            store.register_backbone(
                {
                    **backbone.describe(),
                    "fingerprint": fingerprint,
                    "dense_size": size,
                    "dense_strides": list(backbone.dense_strides),
                    "dense_shapes": [list(feature_map.shape[1:]) for feature_map in maps],
                }
            )
            flat = torch.cat([feature_map.flatten(1) for feature_map in maps], dim=1).to(torch.float16).cpu().numpy()
            _write_half_vectors(store, fingerprint, [key for key, _ in batch], flat)
            advance(len(batch))
    shapes = store.manifest["backbones"][fingerprint]["dense_shapes"]
    _, flat = store.read_vectors(DENSE_KIND, fingerprint, keys, dtype=np.float16)
    flat = torch.from_numpy(np.ascontiguousarray(flat))
    maps, offset = [], 0
    for shape in shapes:
        width = int(np.prod(shape))
        maps.append(flat[:, offset : offset + width].reshape(len(keys), *shape))
        offset += width
    strides = tuple(store.manifest["backbones"][fingerprint]["dense_strides"])
    return DenseFeatures(maps, strides, keys, len(todo), fingerprint)


def _write_half_vectors(store: EmbeddingStore, fingerprint: str, keys: list[str], matrix: np.ndarray) -> None:
    """One shard of float16 rows (the store's own writer keeps float32; dense maps are large)."""
    values = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])
    table = pa.table({"content_hash": pa.array(keys, pa.string()), "features": values})
    store._write_shard(store.shard_dir(DENSE_KIND, fingerprint), table)
