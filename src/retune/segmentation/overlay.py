"""Masks drawn over their image (one colour per structure), and masks as PNG bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212),
)


def structure_colour(index: int) -> tuple[int, int, int]:
    """The colour of the ``index``-th structure of a run (reports, overlays and the served page agree)."""
    return PALETTE[index % len(PALETTE)]


def overlay(image: Image.Image, masks: list[np.ndarray], opacity: float = 0.45) -> Image.Image:
    """``image`` (RGB) with each boolean mask (image-sized) tinted in its structure's colour."""
    canvas = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    for index, mask in enumerate(masks):
        colour = np.asarray(structure_colour(index), dtype=np.float32)
        canvas[mask] = (1 - opacity) * canvas[mask] + opacity * colour
    return Image.fromarray(canvas.round().astype(np.uint8))


def mask_png(mask: np.ndarray) -> bytes:
    """A boolean mask as an 8-bit PNG (0 / 255)."""
    buffer = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
