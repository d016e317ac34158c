"""Segmentation scores, honestly: per structure Dice and IoU on images where it is present, HD95 in the image's own
pixels (MONAI), patient-bootstrap 95% CIs, and for images whose annotated mask is empty their own line: the share
predicted empty and the SIIM/Adaptor "an empty image predicted empty scores 1" Dice, which a predict-nothing model
also reaches (so its baseline is always reported beside it).

Masks are int8 (1 structure, 0 background, -1 ignore: left out of every score).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch

from retune.evaluation.metrics import patient_resamples

IGNORE = -1
PER_IMAGE_COLUMNS = (
    "image_path", "patient_id", "method", "structure", "present", "predicted_empty", "dice", "iou", "hd95",
    "dice_empty_as_one",
)


def hd95(predicted: np.ndarray, truth: np.ndarray) -> float | None:
    """95th-percentile symmetric Hausdorff distance in pixels between two non-empty boolean masks (MONAI), computed
    on their joint bounding box plus a one-pixel margin (same surfaces, far fewer pixels); None if either is empty."""
    if not predicted.any() or not truth.any():
        return None
    from monai.metrics import compute_hausdorff_distance  # imports slowly: only when a distance is needed

    rows, columns = np.nonzero(predicted | truth)
    top, left = max(rows.min() - 1, 0), max(columns.min() - 1, 0)
    box = (slice(top, rows.max() + 2), slice(left, columns.max() + 2))
    as_tensor = lambda mask: torch.from_numpy(np.ascontiguousarray(mask[box]))[None, None].float()  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about a deprecated argument it passes itself
        distance = compute_hausdorff_distance(as_tensor(predicted), as_tensor(truth), include_background=True,
                                              percentile=95)
    return float(distance.item())


def score_mask(predicted: np.ndarray, truth: np.ndarray, with_hd95: bool = True) -> dict:
    """One image's scores for one structure: ``predicted`` boolean, ``truth`` int8 (1 / 0 / -1 ignore).

    Dice, IoU and HD95 are defined only where the structure is present (None otherwise); ``dice_empty_as_one`` is
    the SIIM/Adaptor convention (an empty truth scores 1 if nothing is predicted, else 0).
    """
    valid = truth != IGNORE
    predicted = predicted & valid
    present_pixels = truth == 1
    present = bool(present_pixels.any())
    predicted_empty = not predicted.any()
    dice = iou = distance = None
    if present:
        intersection = float(np.count_nonzero(predicted & present_pixels))
        total = float(np.count_nonzero(predicted) + np.count_nonzero(present_pixels))
        dice = 2 * intersection / total
        iou = intersection / (total - intersection)
        distance = hd95(predicted, present_pixels) if with_hd95 else None
    return {
        "present": present,
        "predicted_empty": predicted_empty,
        "dice": dice,
        "iou": iou,
        "hd95": distance,
        "dice_empty_as_one": dice if present else float(predicted_empty),
    }


def _mean_with_ci(values: np.ndarray, patients: np.ndarray, n_bootstrap: int, seed: int) -> tuple:
    """Mean of ``values`` (NaN = undefined, left out) and its patient-bootstrap 95% percentile interval."""
    defined = ~np.isnan(values)
    values, patients = values[defined], patients[defined]
    if not len(values):
        return None, None
    mean = float(values.mean())
    if n_bootstrap == 0 or len(np.unique(patients)) < 2:
        return mean, None
    codes = np.unique(patients, return_inverse=True)[1]
    replicates = np.array([values[rows].mean() for rows in patient_resamples(codes, n_bootstrap, seed)])
    low, high = np.quantile(replicates, [0.025, 0.975])
    return mean, [float(low), float(high)]


def summarize(per_image: pd.DataFrame, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Per structure (for one method's per-image rows): Dice / IoU / HD95 on present images with CIs, and the
    empty-truth images' share predicted empty and empty-counts-as-1 Dice over all annotated images."""
    summary = {}
    for structure, rows in per_image.groupby("structure", sort=False):
        present = rows[rows["present"]]
        empty = rows[~rows["present"]]
        record = {
            "n_images": len(rows),
            "n_patients": int(rows["patient_id"].nunique()),
            "n_present": len(present),
            "n_empty": len(empty),
            "n_missed": int(present["predicted_empty"].sum()),
        }
        for metric in ("dice", "iou", "hd95"):
            values = present[metric].to_numpy(dtype=float)
            record[metric], record[f"{metric}_ci"] = _mean_with_ci(
                values, present["patient_id"].to_numpy(), n_bootstrap, seed
            )
        record["share_empty_predicted_empty"], record["share_empty_predicted_empty_ci"] = _mean_with_ci(
            empty["predicted_empty"].to_numpy(dtype=float), empty["patient_id"].to_numpy(), n_bootstrap, seed
        )
        record["dice_empty_as_one"], record["dice_empty_as_one_ci"] = _mean_with_ci(
            rows["dice_empty_as_one"].to_numpy(dtype=float), rows["patient_id"].to_numpy(), n_bootstrap, seed
        )
        summary[structure] = record
    return summary
