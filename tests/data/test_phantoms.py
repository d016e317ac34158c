"""Synthetic chest phantoms: deterministic, correctly labelled, written to disk as promised, and learnable."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from retune.data.phantoms import (
    PHANTOM_FINDINGS,
    PhantomCase,
    make_phantom_cases,
    render_phantom,
    write_phantom_dataset,
)
from retune.errors import ConfigError

SIZE = 128
EFFECT_SEEDS = range(6)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def _finding_effect(finding: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The same phantom (same rng seed) without and with one finding, as float pixel arrays."""
    without = _pixels(render_phantom({}, np.random.default_rng(seed), SIZE))
    with_finding = _pixels(render_phantom({finding: 1}, np.random.default_rng(seed), SIZE))
    return without, with_finding


def _region(pixels: np.ndarray, rows: tuple[float, float], cols: tuple[float, float]) -> np.ndarray:
    """Sub-array between fractional row and column bounds."""
    n = pixels.shape[0]
    return pixels[int(rows[0] * n) : int(rows[1] * n), int(cols[0] * n) : int(cols[1] * n)]


def _image_bytes(cases: list[PhantomCase]) -> list[bytes]:
    return [case.image.tobytes() for case in cases]


def test_same_seed_gives_identical_cases_and_another_seed_differs():
    first = make_phantom_cases(6, seed=3, size=64)
    again = make_phantom_cases(6, seed=3, size=64)
    other = make_phantom_cases(6, seed=4, size=64)
    assert _image_bytes(first) == _image_bytes(again)
    assert [(c.labels, c.report, c.patient_id) for c in first] == [(c.labels, c.report, c.patient_id) for c in again]
    assert all(a != b for a, b in zip(_image_bytes(first), _image_bytes(other)))


def test_a_case_does_not_depend_on_how_many_are_made():
    few = make_phantom_cases(3, seed=8, size=48)
    many = make_phantom_cases(7, seed=8, size=48)
    assert _image_bytes(few) == _image_bytes(many[:3])
    assert [c.labels for c in few] == [c.labels for c in many[:3]]


@pytest.mark.parametrize("size", [48, 128])
def test_images_are_greyscale_of_the_requested_size_with_full_binary_labels(size):
    for case in make_phantom_cases(4, seed=1, size=size):
        assert case.image.mode == "L"
        assert case.image.size == (size, size)
        assert list(case.labels) == list(PHANTOM_FINDINGS)
        assert set(case.labels.values()) <= {0, 1}


def test_lungs_are_darker_than_the_mediastinum():
    for case in make_phantom_cases(8, seed=2, size=SIZE, prevalence=0.0):
        pixels = _pixels(case.image)
        lungs = np.concatenate([_region(pixels, (0.25, 0.45), (0.2, 0.35)).ravel(),
                                _region(pixels, (0.25, 0.45), (0.65, 0.8)).ravel()])
        mediastinum = _region(pixels, (0.15, 0.4), (0.47, 0.53))
        assert mediastinum.mean() > lungs.mean() + 40


def test_prevalence_is_roughly_respected():
    cases = make_phantom_cases(600, seed=5, size=16, prevalence=0.3)
    rates = np.array([[c.labels[f] for f in PHANTOM_FINDINGS] for c in cases]).mean(axis=0)
    assert np.all(np.abs(rates - 0.3) < 0.07), dict(zip(PHANTOM_FINDINGS, rates))


def test_prevalence_per_finding_leaves_unnamed_findings_absent():
    cases = make_phantom_cases(40, seed=5, size=16, prevalence={"Effusion": 1.0, "Nodule": 0.5})
    assert all(c.labels["Effusion"] == 1 for c in cases)
    assert 0 < sum(c.labels["Nodule"] for c in cases) < 40
    assert all(c.labels[f] == 0 for c in cases for f in PHANTOM_FINDINGS if f not in ("Effusion", "Nodule"))


@pytest.mark.parametrize(
    "kwargs",
    [{"prevalence": 1.5}, {"prevalence": {"Fracture": 0.2}}, {"images_per_patient": 0}, {"n": -1}],
)
def test_bad_arguments_raise_config_error(kwargs):
    arguments = {"n": 2, "size": 16, **kwargs}
    with pytest.raises(ConfigError):
        make_phantom_cases(**arguments)


def test_render_rejects_unknown_findings_and_treats_missing_ones_as_absent():
    with pytest.raises(ConfigError, match="Fracture"):
        render_phantom({"Fracture": 1}, np.random.default_rng(0), 32)
    implicit = render_phantom({}, np.random.default_rng(0), 32)
    explicit = render_phantom({f: 0 for f in PHANTOM_FINDINGS}, np.random.default_rng(0), 32)
    assert implicit.tobytes() == explicit.tobytes()


def test_patients_get_consecutive_images():
    ids = [c.patient_id for c in make_phantom_cases(7, seed=0, size=16, images_per_patient=3)]
    assert ids[0] == ids[1] == ids[2] != ids[3]
    assert ids[3] == ids[4] == ids[5] != ids[6]
    assert len(set(ids)) == 3


def test_reports_are_one_line_and_agree_with_labels():
    for case in make_phantom_cases(60, seed=6, size=16, prevalence=0.5):
        assert "\n" not in case.report and case.report.endswith(".")
        assert ("Enlarged cardiac silhouette." in case.report) == bool(case.labels["Cardiomegaly"])
        assert ("No pneumothorax." in case.report) == (not case.labels["Pneumothorax"])
        assert ("No pleural effusion." in case.report) == (not case.labels["Effusion"])
        assert ("nodule" in case.report) == bool(case.labels["Nodule"])
        assert ("mass" in case.report) == bool(case.labels["Mass"])
        assert ("opacity" in case.report) == bool(case.labels["Opacity"])


@pytest.mark.parametrize("seed", EFFECT_SEEDS)
def test_cardiomegaly_widens_the_bright_central_lower_region(seed):
    without, with_finding = _finding_effect("Cardiomegaly", seed)
    bright = np.percentile(without, 60)
    area = lambda pixels: (_region(pixels, (0.5, 0.85), (0.25, 0.85)) > bright).mean()  # noqa: E731
    assert area(with_finding) > area(without) + 0.04


@pytest.mark.parametrize("seed", EFFECT_SEEDS)
def test_pneumothorax_darkens_one_upper_hemithorax(seed):
    without, with_finding = _finding_effect("Pneumothorax", seed)
    darker = with_finding - without < -8
    darkened = max(_region(darker, (0.05, 0.7), (0.0, 0.5)).mean(), _region(darker, (0.05, 0.7), (0.5, 1.0)).mean())
    assert darkened > 0.04


@pytest.mark.parametrize("seed", EFFECT_SEEDS)
def test_effusion_brightens_one_base(seed):
    without, with_finding = _finding_effect("Effusion", seed)
    change = with_finding - without
    right_base, left_base = _region(change, (0.55, 0.85), (0.05, 0.5)), _region(change, (0.55, 0.85), (0.5, 0.95))
    assert max(right_base.mean(), left_base.mean()) > 3


@pytest.mark.parametrize("seed", EFFECT_SEEDS)
def test_opacity_hazes_one_lung(seed):
    without, with_finding = _finding_effect("Opacity", seed)
    change = with_finding - without
    assert max(_region(change, (0.1, 0.8), (0.05, 0.5)).mean(), _region(change, (0.1, 0.8), (0.5, 0.95)).mean()) > 3


@pytest.mark.parametrize("seed", EFFECT_SEEDS)
def test_nodules_are_small_dense_spots_and_masses_larger_blobs(seed):
    without, with_nodule = _finding_effect("Nodule", seed)
    _, with_mass = _finding_effect("Mass", seed)
    nodule_area = (with_nodule - without > 20).mean()
    mass_area = (with_mass - without > 20).mean()
    assert (with_nodule - without).max() > 40
    assert 0 < nodule_area < 0.01
    assert 0.005 < mass_area < 0.05


@pytest.mark.parametrize(("finding", "brighter"), [("Pneumothorax", False), ("Effusion", True)])
def test_reported_side_matches_the_drawn_side(finding, brighter):
    """Patient's left is image right; the half that changes most must be the side the report names."""
    present = make_phantom_cases(6, seed=9, size=SIZE, prevalence={finding: 1.0})
    absent = make_phantom_cases(6, seed=9, size=SIZE, prevalence={finding: 0.0})
    for with_case, without_case in zip(present, absent):
        change = _pixels(with_case.image) - _pixels(without_case.image)
        if not brighter:
            change = -change
        image_right_changes_more = change[:, SIZE // 2 :].sum() > change[:, : SIZE // 2].sum()
        assert ("left" in with_case.report.lower()) == image_right_changes_more, with_case.report


@pytest.mark.slow  # seconds of training: make test and CI run it, make test-fast does not
def test_findings_are_learnable_from_downsampled_pixels():
    cases = make_phantom_cases(400, seed=11, size=SIZE, prevalence=0.5)
    small = [c.image.resize((64, 64), Image.Resampling.BILINEAR) for c in cases]
    features = np.stack([np.asarray(image, dtype=np.float32).ravel() / 255.0 for image in small])
    targets = np.array([[c.labels[f] for f in PHANTOM_FINDINGS] for c in cases])
    aurocs = []
    for column in range(len(PHANTOM_FINDINGS)):
        model = LogisticRegression(C=0.01, max_iter=1000).fit(features[:300], targets[:300, column])
        aurocs.append(roc_auc_score(targets[300:, column], model.decision_function(features[300:])))
    assert np.mean(aurocs) > 0.7, dict(zip(PHANTOM_FINDINGS, np.round(aurocs, 2)))


def test_write_phantom_dataset_writes_pngs_and_labels_csv(tmp_path):
    csv_path = write_phantom_dataset(tmp_path, n=5, seed=2, size=32, images_per_patient=1)
    assert csv_path == tmp_path / "labels.csv"
    with csv_path.open(newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == ["path", "patient_id", "report", *PHANTOM_FINDINGS]
    assert [r["path"] for r in rows] == [f"images/phantom_{i:05d}.png" for i in range(5)]
    expected = make_phantom_cases(5, seed=2, size=32, images_per_patient=1)
    for row, case in zip(rows, expected):
        with Image.open(tmp_path / row["path"]) as image:
            assert image.mode == "L" and image.size == (32, 32)
            assert image.tobytes() == case.image.tobytes()
        assert {f: int(row[f]) for f in PHANTOM_FINDINGS} == case.labels
        assert (row["patient_id"], row["report"]) == (case.patient_id, case.report)
    assert len({r["patient_id"] for r in rows}) == 5


def test_write_phantom_dataset_is_idempotent_and_leaves_no_temp_files(tmp_path):
    write_phantom_dataset(tmp_path, n=4, seed=7, size=32)
    first = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    write_phantom_dataset(str(tmp_path), n=4, seed=7, size=32)
    second = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert first == second
    assert sorted(str(p) for p in first) == ["images/phantom_00000.png", "images/phantom_00001.png",
                                             "images/phantom_00002.png", "images/phantom_00003.png", "labels.csv"]
