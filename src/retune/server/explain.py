"""Explanation maps. Occlusion sensitivity: how much each finding's probability drops when a region is covered.

Occlusion works for every backbone (pooled-only ones included) and is computed on the decoded image
itself, so the map lines up with the picture whatever resizing or cropping the backbone's
preprocessing does. Each of grid x grid cells is filled with the image's mean colour in turn.
Patch-to-prompt similarity (``retune.experiments.inference.patch_scorer``) needs one encoder pass, where the backbone's
patch tokens allow it; its grid covers the model's input, the centre square of the image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

DESCRIPTIONS = {
    "occlusion": "occlusion sensitivity: each cell shows how much the finding's probability drops when that part "
    "of the image is covered with its mean grey (red: the region raises the score, blue: it lowers it)",
    "patch": "patch-to-prompt similarity: each patch's similarity to the finding's positive prompt minus its negative "
    "prompt, through the run's adaptors (red: closer to the positive prompt); the grid covers the model's input, "
    "the centre square",
}
WORKING_SIDE = 512  # images are shrunk to this longest side first: the encoders see at most a few hundred pixels


def occlusion_images(image: Image.Image, grid: int) -> list[Image.Image]:
    """The image shrunk to ``WORKING_SIDE``, followed by grid x grid copies each with one cell covered (row-major)."""
    base = image.convert("RGB")
    base.thumbnail((WORKING_SIDE, WORKING_SIDE))
    fill = tuple(int(v) for v in np.asarray(base).reshape(-1, 3).mean(axis=0))
    width, height = base.size
    copies = [base]
    for row in range(grid):
        for col in range(grid):
            covered = base.copy()
            covered.paste(
                fill,
                (col * width // grid, row * height // grid, (col + 1) * width // grid, (row + 1) * height // grid),
            )
            copies.append(covered)
    return copies


def occlusion_maps(probabilities: np.ndarray, grid: int) -> np.ndarray:
    """Rows of ``probabilities`` scored for ``occlusion_images`` -> classes x grid x grid drops (base - covered)."""
    base, covered = probabilities[0], probabilities[1:]
    return (base[None, :] - covered).T.reshape(len(base), grid, grid)
