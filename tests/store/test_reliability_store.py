"""The frozen-prefix cache across processes: what one process (a DDP rank) cached, another one that opened the store
earlier reads, and neither loses the other's manifest entries."""

from __future__ import annotations

import torch

from retune.backbones.registry import create_backbone
from retune.data.phantoms import write_phantom_dataset
from retune.data.readers import read_table
from retune.store import EmbeddingStore
from retune.store.prefix import prefix_activations, prefix_fingerprint


def test_a_rank_that_opened_the_store_before_another_cached_the_prefix_reads_it(tmp_path):
    table = read_table(write_phantom_dataset(tmp_path / "phantoms", n=4, seed=1, size=64))
    backbone = create_backbone("default", device="cpu")
    store_dir = tmp_path / "store"
    first, second = EmbeddingStore(store_dir), EmbeddingStore(store_dir)  # both opened before anything is cached

    def compute(pixels: torch.Tensor) -> torch.Tensor:
        return pixels.mean(dim=(2, 3))[:, :, None]  # a stand-in for the first k blocks

    built = prefix_activations(table, backbone, 5, first, compute)
    read = prefix_activations(table, backbone, 5, second, compute)  # rank 1 after the barrier: nothing to compute
    assert read.n_computed == 0 and torch.equal(read.activations, built.activations)
    second.register_backbone({**backbone.describe(), "fingerprint": "another", "prefix_blocks": 2})
    with second.lock():
        pass
    assert {prefix_fingerprint(backbone, 5), "another"} <= set(EmbeddingStore(store_dir).manifest["backbones"])
