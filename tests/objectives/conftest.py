"""A tiny random token backbone for the objectives' end-to-end tests (no weights to download)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from retune.backbones.base import Backbone, Encoded


class RandomTokenBackbone(Backbone):
    """Aligned-looking fake: 16x16 images as a 2x2 grid of patch tokens through a seeded random projection; each
    word a seeded random vector looked up by a CRC of the word."""

    spec = "random-tokens"
    aligned = False
    image_dim = 6
    text_dim = 5
    vocabulary = 101

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.patch_projection = torch.randn(3 * 64, self.image_dim, generator=generator)
        self.word_vectors = torch.randn(self.vocabulary, self.text_dim, generator=generator)

    def preprocess(self, image):
        array = np.asarray(image.convert("RGB").resize((16, 16)), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def encode_images(self, pixels, tokens=False) -> Encoded:
        patches = pixels.unfold(2, 8, 8).unfold(3, 8, 8).permute(0, 2, 3, 1, 4, 5).reshape(len(pixels), 4, -1)
        token_vectors = torch.tanh(patches @ self.patch_projection)
        return Encoded(token_vectors.mean(1), token_vectors if tokens else None)

    def encode_texts(self, texts, tokens=False) -> Encoded:
        ids = [[zlib.crc32(word.lower().encode()) % self.vocabulary for word in text.split()] or [0] for text in texts]
        hidden = torch.zeros(len(texts), max(map(len, ids)), self.text_dim)
        for row, row_ids in enumerate(ids):
            hidden[row, : len(row_ids)] = self.word_vectors[row_ids]
        return Encoded(hidden.sum(1), hidden if tokens else None)

    def fingerprint_parts(self) -> dict:
        return {"family": "random-tokens"}


@pytest.fixture
def token_backbone() -> RandomTokenBackbone:
    return RandomTokenBackbone()


@pytest.fixture
def registered_token_backbone():
    """RandomTokenBackbone registered as backbone 'random-tokens' (so configs and the CLI can name it); the registry
    is restored afterwards."""
    from retune.backbones.base import BackboneInfo
    from retune.backbones.registry import _FACTORIES, register_backbone, resolve_spec

    resolve_spec("default")  # load the built-in families first, so restoring leaves them in place
    saved = dict(_FACTORIES)
    register_backbone("random-tokens", BackboneInfo("random-tokens", "test double", "random-tokens", False))(
        lambda source: RandomTokenBackbone()
    )
    yield "random-tokens"
    _FACTORIES.clear()
    _FACTORIES.update(saved)
