"""A small, per-image-free summary of a set of images (sizes, colour modes, intensities), and how far two differ.

A run records the summary of its training images; evaluating it on another site's CSV compares that CSV's images
with it, so a change of scanner, resolution or colour handling is named loudly instead of passing unnoticed
(e.g. 224 px squashed RGB JPEGs scored by a model trained on 256 px and 64 px greyscale PNGs).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from PIL import Image

from retune.data.images import load_image

INTENSITY_SAMPLE = 64  # images decoded for the intensity and colour statistics (headers are read for all)
GREY_TOLERANCE = 2.0  # mean absolute difference between colour channels (0-255) below which an RGB image is grey
TOP_SIZES = 5
SHARED_SIZES = 20  # sizes whose share is kept (enough to compare; a folder of all-different sizes stays small)
# What counts as "differs a lot" between training and scored images.
SIZE_RATIO_LIMIT = 1.5  # median longer side, either way
SHARED_SIZE_LIMIT = 0.5  # share of scored images whose exact size occurs among the training images
MODE_DISTANCE_LIMIT = 0.5  # total variation distance between colour-mode distributions
GREY_SHARE_LIMIT = 0.5  # difference in the share of images with grey content
INTENSITY_LIMIT = 25.0  # difference in mean grey intensity (0-255)


def image_summary(paths: list[str], seed: int = 0) -> dict:
    """Sizes and modes from every readable header, intensity and grey share from a seeded sample; no per-image data."""
    sizes: Counter = Counter()
    modes: Counter = Counter()
    sides = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes[f"{image.width}x{image.height}"] += 1
                modes[image.mode] += 1
                sides.append(max(image.size))
        except Exception:  # DICOM and unreadable files have no PIL header; they are counted, not summarised
            modes["other"] += 1
    chosen = np.random.default_rng(seed).permutation(len(paths))[:INTENSITY_SAMPLE]
    means, greys = [], []
    for index in chosen:
        try:
            pixels = np.asarray(load_image(paths[index]), dtype=np.float32)
        except Exception:  # unreadable images are reported by the embedding step; here they are only skipped
            continue
        channels = pixels.reshape(-1, pixels.shape[-1])
        greys.append(float(np.abs(channels - channels.mean(axis=1, keepdims=True)).mean()) < GREY_TOLERANCE)
        means.append(float(channels.mean()))
    n_headers = sum(sizes.values())
    return {
        "n_images": len(paths),
        "sizes": dict(sizes.most_common(TOP_SIZES)),
        "size_shares": {size: count / n_headers for size, count in sizes.most_common(SHARED_SIZES)},
        "median_longer_side": float(np.median(sides)) if sides else None,
        "modes": dict(modes),
        "n_sampled": len(means),
        "grey_share": float(np.mean(greys)) if greys else None,
        "mean_intensity": float(np.mean(means)) if means else None,
    }


def compare_summaries(training: dict, scored: dict) -> list[str]:
    """One line per way the scored images differ a lot from the training images (empty: no large shift)."""
    notes = []
    train_side, scored_side = training.get("median_longer_side"), scored.get("median_longer_side")
    if train_side and scored_side and max(train_side / scored_side, scored_side / train_side) > SIZE_RATIO_LIMIT:
        notes.append(f"median image side {scored_side:.0f} px here vs {train_side:.0f} px in training")
    seen = training.get("size_shares", {})
    shared = sum(share for size, share in scored.get("size_shares", {}).items() if size in seen)
    if scored.get("size_shares") and shared < SHARED_SIZE_LIMIT:
        notes.append(
            f"{shared:.0%} of these images have a size seen in training (here {_top(scored['sizes'])}; "
            f"training {_top(training['sizes'])})"
        )
    distance = _mode_distance(training.get("modes", {}), scored.get("modes", {}))
    if distance > MODE_DISTANCE_LIMIT:
        grey = ""
        if scored.get("grey_share") is not None and training.get("grey_share") is not None:
            grey = f"; grey content in {scored['grey_share']:.0%} of sampled images here, "
            grey += f"{training['grey_share']:.0%} in training"
        modes = f"here {_top(scored['modes'])}; training {_top(training['modes'])}"
        notes.append(f"file colour modes differ ({modes}{grey})")
    if _differ(training.get("grey_share"), scored.get("grey_share"), GREY_SHARE_LIMIT):
        notes.append(
            f"{scored['grey_share']:.0%} of sampled images here have grey content vs {training['grey_share']:.0%} in "
            "training"
        )
    if _differ(training.get("mean_intensity"), scored.get("mean_intensity"), INTENSITY_LIMIT):
        notes.append(
            f"mean intensity {scored['mean_intensity']:.0f} here vs {training['mean_intensity']:.0f} in training "
            "(0-255)"
        )
    return notes


def shift_report(training: dict | None, scored: dict) -> tuple[dict, list[str]]:
    """The ``site_shift`` block of an evaluation and its loud warning (none when nothing differs a lot)."""
    if training is None:
        return {"checked": False, "scored": scored}, []
    notes = compare_summaries(training, scored)
    report = {"checked": True, "training": training, "scored": scored, "large_differences": notes}
    if not notes:
        return report, []
    return report, [
        "DATA-SITE SHIFT: these images differ a lot from the training images (" + "; ".join(notes) + "); scores may "
        "reflect the change of site as much as the findings"
    ]


def _top(counts: dict) -> str:
    return ", ".join(f"{name} {count}" for name, count in list(counts.items())[:3])


def _mode_distance(first: dict, second: dict) -> float:
    total_first, total_second = sum(first.values()), sum(second.values())
    if not total_first or not total_second:
        return 0.0
    names = set(first) | set(second)
    return 0.5 * sum(abs(first.get(n, 0) / total_first - second.get(n, 0) / total_second) for n in names)


def _differ(first: float | None, second: float | None, limit: float) -> bool:
    return first is not None and second is not None and abs(first - second) > limit
