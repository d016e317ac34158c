"""Patient-level splits and subsets: deterministic, disjoint by patient, sized by images."""

from __future__ import annotations

import numpy as np
import pytest

from retune.data.splits import patient_split, subset_patients
from retune.errors import ConfigError


@pytest.fixture
def patients() -> np.ndarray:
    """1,000 patients with 1 to 6 images each, rows shuffled."""
    rng = np.random.default_rng(7)
    ids = np.repeat([f"p{i:04d}" for i in range(1000)], rng.integers(1, 7, 1000))
    return rng.permutation(ids)


def test_split_covers_every_row_once_and_keeps_patients_together(patients):
    splits = patient_split(patients)
    rows = np.concatenate(list(splits.values()))
    assert sorted(rows.tolist()) == list(range(len(patients)))
    owners = [set(patients[splits[name]]) for name in ("train", "val", "test")]
    assert not (owners[0] & owners[1]) and not (owners[0] & owners[2]) and not (owners[1] & owners[2])


def test_split_sizes_follow_fractions_in_images(patients):
    splits = patient_split(patients, fractions=(0.6, 0.15, 0.25), seed=3)
    for name, fraction in (("train", 0.6), ("val", 0.15), ("test", 0.25)):
        assert abs(len(splits[name]) / len(patients) - fraction) < 0.01


def test_split_is_deterministic_and_independent_of_row_order(patients):
    first = patient_split(patients, seed=1)
    assert all(np.array_equal(first[k], v) for k, v in patient_split(patients, seed=1).items())
    order = np.random.default_rng(0).permutation(len(patients))
    reordered = patient_split(patients[order], seed=1)
    assert set(patients[first["test"]]) == set(patients[order][reordered["test"]])
    assert set(patients[first["test"]]) != set(patients[patient_split(patients, seed=2)["test"]])


def test_zero_fraction_gives_empty_split(patients):
    splits = patient_split(patients, fractions=(0.8, 0.0, 0.2))
    assert len(splits["val"]) == 0 and len(splits["train"]) + len(splits["test"]) == len(patients)


@pytest.mark.parametrize("fractions", [(0.7, 0.2, 0.2), (1.2, -0.1, -0.1), (0.5, 0.5), (float("nan"), 0.5, 0.5)])
def test_invalid_fractions_are_config_errors(patients, fractions):
    with pytest.raises(ConfigError, match="split fractions"):
        patient_split(patients, fractions=fractions)


def test_subset_is_patient_level_sized_and_nested(patients):
    small = subset_patients(patients, 0.01, seed=5)
    large = subset_patients(patients, 0.10, seed=5)
    assert abs(len(large) / len(patients) - 0.10) < 0.01
    assert set(small) <= set(large)
    chosen = set(patients[large])
    assert all(patients[i] not in chosen for i in np.setdiff1d(np.arange(len(patients)), large))
    assert np.array_equal(large, subset_patients(patients, 0.10, seed=5))


def test_tiny_subset_keeps_one_patient():
    rows = subset_patients(["a", "a", "b", "c"], 0.001, seed=0)
    assert len(rows) >= 1 and len({["a", "a", "b", "c"][i] for i in rows}) == 1


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5, float("nan")])
def test_invalid_subset_fraction_is_config_error(fraction):
    with pytest.raises(ConfigError, match="subset fraction"):
        subset_patients(["a", "b"], fraction, seed=0)
