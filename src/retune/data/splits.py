"""Deterministic patient-level splits and subsets, so no patient's images leak across train/val/test."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from retune.errors import ConfigError

SPLIT_NAMES = ("train", "val", "test")


def patient_split(
    patients: Sequence[str] | np.ndarray,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Row indices for "train", "val" and "test"; every patient's rows land in one split.

    Patients are shuffled with ``seed`` and cut where the running image count crosses each
    fraction, so split sizes are close to ``fractions`` in images, not patients.
    """
    fractions = _check_fractions(fractions)
    positions = _patient_positions(patients, seed)
    cuts = np.cumsum(fractions)[:-1] * len(positions)
    split_of_row = np.searchsorted(cuts, positions, side="right")
    return {name: np.flatnonzero(split_of_row == k) for k, name in enumerate(SPLIT_NAMES)}


def subset_patients(patients: Sequence[str] | np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted row indices of a seeded patient-level subset holding about ``fraction`` of the rows.

    At least one patient is kept; with the same seed a smaller fraction's subset is contained in a
    larger one's (handy for 1% / 10% label-efficiency runs).
    """
    if not 0 < fraction <= 1:  # also rejects NaN
        raise ConfigError(f"subset fraction must be in (0, 1], got {fraction!r}")
    positions = _patient_positions(patients, seed)
    if positions.size == 0:
        return np.array([], dtype=np.int64)
    chosen = positions < fraction * len(positions)
    if not chosen.any():
        chosen = positions == positions.min()
    return np.flatnonzero(chosen)


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    """Three finite, non-negative fractions summing to 1, else ConfigError."""
    values = np.asarray(fractions, dtype=np.float64)
    if values.shape != (len(SPLIT_NAMES),):
        raise ConfigError(f"split fractions must be three numbers (train, val, test), got {list(fractions)}")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ConfigError(f"split fractions must be non-negative, got {list(fractions)}")
    if not math.isclose(float(values.sum()), 1.0, abs_tol=1e-6):
        raise ConfigError(f"split fractions must sum to 1, got {list(fractions)} (sum {values.sum():g})")
    return values


def _patient_positions(patients: Sequence[str] | np.ndarray, seed: int) -> np.ndarray:
    """For each row, the midpoint (in images) of its patient's block after a seeded shuffle of patients.

    Sorted unique ids are permuted with ``numpy.random.default_rng(seed)``, making the order
    independent of row order; every row of a patient gets the same position in ``[0, n_rows)``.
    """
    ids = np.asarray(patients)
    if ids.ndim != 1:
        raise ConfigError(f"patients must be a 1-D sequence of ids, got shape {ids.shape}")
    unique, inverse, counts = np.unique(ids.astype(str), return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(unique))
    shuffled_counts = counts[order]
    midpoints = np.empty(len(unique), dtype=np.float64)
    midpoints[order] = np.cumsum(shuffled_counts) - shuffled_counts / 2
    return midpoints[inverse.reshape(-1)]
