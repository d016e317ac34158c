"""Preprocessed pixels for training encoders: decoded once to find unreadable images, held in memory while they fit."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from retune.backbones.base import Backbone
from retune.data.images import load_image
from retune.errors import RetuneError

PIXEL_MEMORY_BUDGET = 2 * 2**30  # decoded training pixels kept in RAM up to this (about 3,500 images at 224 px)


def pixel_shape(backbone: Backbone) -> tuple[int, ...]:
    """Shape of one preprocessed image (C x H x W), found by preprocessing a blank one."""
    return tuple(backbone.preprocess(Image.new("RGB", (64, 64))).shape)


def decode_pixels(paths: list[str], backbone: Backbone) -> list[torch.Tensor | None]:
    """Preprocessed CHW tensors; None for an unreadable image."""
    pixels: list[torch.Tensor | None] = []
    for path in paths:
        try:
            pixels.append(backbone.preprocess(load_image(path)))
        except RetuneError:
            pixels.append(None)
    return pixels


class PixelsOnAccess:
    """Preprocessed pixels of a fixed list of images, decoded when rows are indexed: memory is one batch, not the data
    set."""

    def __init__(self, paths: list[str], backbone: Backbone) -> None:
        self.paths, self.backbone = list(paths), backbone

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, rows: torch.Tensor | np.ndarray) -> torch.Tensor:
        indices = torch.as_tensor(rows).reshape(-1).tolist()
        return torch.stack([self.backbone.preprocess(load_image(self.paths[i])) for i in indices])


def pixel_inputs(
    paths: list[str], backbone: Backbone, memory_budget: int = PIXEL_MEMORY_BUDGET
) -> tuple[torch.Tensor | PixelsOnAccess, np.ndarray]:
    """(inputs indexable by row, readable rows): decoded pixels held in memory while they fit ``memory_budget`` bytes,
    else decoded again batch by batch (every image is decoded once up front to find the unreadable ones)."""
    per_image = int(np.prod(pixel_shape(backbone))) * 4  # float32 pixels of one image
    if per_image * len(paths) <= memory_budget:
        pixels = decode_pixels(paths, backbone)
        rows = np.asarray([row for row, tensor in enumerate(pixels) if tensor is not None], dtype=int)
        # peak: about twice the budget
        return (torch.stack([pixels[row] for row in rows]) if len(rows) else torch.zeros(0)), rows
    rows = np.asarray(
        [row for row, path in enumerate(paths) if decode_pixels([path], backbone)[0] is not None], dtype=int
    )
    return PixelsOnAccess([paths[row] for row in rows], backbone), rows
