"""Seeded synthetic chest-radiograph-like images with controllable findings.

They stand in for real radiographs in fast unit tests and in the offline demo: every finding
is drawn so a simple model can learn it, while pose, anatomy and exposure vary from image to image.
Image left is the patient's right, as on a real posteroanterior film.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from retune.errors import ConfigError, unknown_name

PHANTOM_FINDINGS: tuple[str, ...] = ("Cardiomegaly", "Effusion", "Nodule", "Mass", "Pneumothorax", "Opacity")

_DEFAULT_PREVALENCE = 0.3
_DEFAULT_IMAGES_PER_PATIENT = 2
_MAX_NODULES = 3
_MASS_HARMONICS = 4


@dataclass
class PhantomCase:
    """One synthetic radiograph with its 0/1 label per finding, a one-line report and its patient."""

    image: Image.Image
    labels: dict[str, int]
    report: str
    patient_id: str


@dataclass(frozen=True, eq=False)
class _Layout:
    """Every random choice for one image, drawn before drawing so that toggling a finding changes nothing else.

    Sides are +1 for image right (patient's left) and -1 for image left (patient's right).
    Lengths are in image units: the image spans [-1, 1] both ways.
    """

    angle: float
    scale: float
    shift: tuple[float, float]
    contrast: float
    brightness: float
    gamma: float
    body_radii: tuple[float, float]
    lung_offset: float
    lung_centre_y: float
    lung_radii: tuple[float, float]
    dome_heights: tuple[float, float]
    heart_centre: tuple[float, float]
    heart_radii: tuple[float, float]
    enlarged_heart_width: float
    rib_phase: float
    rib_spacing: float
    markings: np.ndarray
    effusion_side: int
    effusion_level: float
    nodule_count: int
    nodule_centres: np.ndarray
    nodule_radii: np.ndarray
    mass_centre: tuple[float, float]
    mass_radius: float
    mass_amplitudes: np.ndarray
    mass_phases: np.ndarray
    pneumothorax_side: int
    collapse: float
    opacity_side: int
    opacity_field: np.ndarray
    pixel_noise: np.ndarray


def _side(rng: np.random.Generator) -> int:
    """A fair coin for which side a finding is on: +1 image right (patient's left), -1 image left."""
    return 1 if rng.random() < 0.5 else -1


def _sample_layout(rng: np.random.Generator, size: int) -> _Layout:
    """Draw anatomy, pose, exposure and the look of every finding (present or not) in a fixed order."""
    lung_offset = rng.uniform(0.38, 0.43)
    lung_centre_y = rng.uniform(-0.06, 0.02)
    lung_radii = (rng.uniform(0.28, 0.33), rng.uniform(0.68, 0.76))
    right_dome = rng.uniform(0.36, 0.44)
    heart_width = rng.uniform(0.2, 0.28)
    layout = dict(
        angle=math.radians(rng.uniform(-2.5, 2.5)),
        scale=rng.uniform(0.93, 1.05),
        shift=(rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05)),
        contrast=rng.uniform(0.8, 1.2),
        brightness=rng.uniform(-0.07, 0.07),
        gamma=rng.uniform(0.8, 1.25),
        body_radii=(rng.uniform(0.86, 0.95), rng.uniform(1.05, 1.2)),
        lung_offset=lung_offset,
        lung_centre_y=lung_centre_y,
        lung_radii=lung_radii,
        dome_heights=(right_dome, right_dome + rng.uniform(0.02, 0.07)),
        heart_centre=(rng.uniform(0.06, 0.11), rng.uniform(0.22, 0.28)),
        heart_radii=(heart_width, rng.uniform(0.21, 0.25)),
        enlarged_heart_width=heart_width + rng.uniform(0.1, 0.16),
        rib_phase=rng.uniform(0.0, 1.0),
        rib_spacing=rng.uniform(0.15, 0.18),
        markings=rng.random((16, 16)),
    )
    layout["effusion_side"] = _side(rng)
    layout["effusion_level"] = rng.uniform(0.1, 0.35)
    layout["nodule_count"] = int(rng.integers(1, _MAX_NODULES + 1))
    nodule_sides = np.where(rng.random(_MAX_NODULES) < 0.5, -1.0, 1.0)
    nodule_angle = rng.uniform(0.0, 2 * np.pi, _MAX_NODULES)
    nodule_reach = 0.65 * np.sqrt(rng.random(_MAX_NODULES))
    layout["nodule_centres"] = np.stack(
        [
            nodule_sides * lung_offset + nodule_reach * np.cos(nodule_angle) * lung_radii[0],
            lung_centre_y - 0.2 + nodule_reach * np.sin(nodule_angle) * lung_radii[1] * 0.6,
        ],
        axis=1,
    )
    layout["nodule_radii"] = rng.uniform(0.035, 0.055, _MAX_NODULES)
    mass_side = _side(rng)
    layout["mass_centre"] = (
        mass_side * lung_offset + rng.uniform(-0.3, 0.3) * lung_radii[0],
        lung_centre_y + rng.uniform(-0.4, 0.1) * lung_radii[1],
    )
    layout["mass_radius"] = rng.uniform(0.1, 0.15)
    layout["mass_amplitudes"] = rng.uniform(0.0, 0.15, _MASS_HARMONICS)
    layout["mass_phases"] = rng.uniform(0.0, 2 * np.pi, _MASS_HARMONICS)
    layout["pneumothorax_side"] = _side(rng)
    layout["collapse"] = rng.uniform(0.25, 0.4)
    layout["opacity_side"] = _side(rng)
    layout["opacity_field"] = rng.random((5, 5))
    layout["pixel_noise"] = rng.normal(0.0, rng.uniform(0.015, 0.035), (size, size)).astype(np.float32)
    return _Layout(**layout)


@lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates spanning [-1, 1], as (x, y) float32 arrays."""
    axis = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2.0 - 1.0
    return np.meshgrid(axis, axis)


def _upsample(field: np.ndarray, size: int) -> np.ndarray:
    """Smoothly enlarge a small random field to size x size (bicubic)."""
    image = Image.fromarray(field.astype(np.float32)).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image)


def _inside(signed_distance: np.ndarray, softness: float) -> np.ndarray:
    """Soft 0..1 mask from a distance that is positive inside, ramping over ``softness``."""
    return np.clip(0.5 + signed_distance / softness, 0.0, 1.0)


def _lung_radius(u: np.ndarray, v: np.ndarray, centre: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
    """Normalised lung radius (1 on the outline): round apex, squarer base for sharp costophrenic angles."""
    du2 = np.square((u - centre[0]) / radii[0])
    dv = (v - centre[1]) / radii[1]
    dv2 = dv * dv
    upper = np.sqrt(du2 + dv2)
    lower = np.sqrt(np.sqrt(du2 * du2 + dv2 * dv2))
    return np.where(dv < 0, upper, lower)


def _body_coordinates(layout: _Layout, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates moved into the patient's frame, undoing this image's shift, rotation and scale."""
    x, y = _pixel_grid(size)
    cos_a, sin_a = math.cos(layout.angle), math.sin(layout.angle)
    xs, ys = x - layout.shift[0], y - layout.shift[1]
    return (cos_a * xs + sin_a * ys) / layout.scale, (-sin_a * xs + cos_a * ys) / layout.scale


def _pneumothorax(layout: _Layout, u: np.ndarray, v: np.ndarray, air: np.ndarray, soft: float, size: int):
    """The lucent crescent between chest wall and collapsed lung, and the thin pleural line bounding it."""
    rx, ry = layout.lung_radii
    side = layout.pneumothorax_side
    centre = (
        side * (layout.lung_offset - 0.5 * layout.collapse * rx),
        layout.lung_centre_y + 0.3 * layout.collapse * ry,
    )
    radii = (rx * (1.0 - layout.collapse), ry * (1.0 - 0.5 * layout.collapse))
    distance = (_lung_radius(u, v, centre, radii) - 1.0) * radii[0]
    return air * _inside(distance, soft), air * np.exp(-((distance * size / 1.2) ** 2))


def _effusion(layout: _Layout, u: np.ndarray, v: np.ndarray, lung: np.ndarray) -> np.ndarray:
    """Basal fluid in one lung whose upper edge rises laterally (meniscus), filling the costophrenic angle."""
    side = layout.effusion_side
    lateral = np.clip(side * (u - side * layout.lung_offset) / layout.lung_radii[0], 0.0, 1.2)
    base = layout.lung_centre_y + 0.8 * layout.lung_radii[1]
    surface = base - layout.effusion_level - 0.22 * lateral * lateral
    return _inside(v - surface, 0.06) * lung


def _mass(layout: _Layout, u: np.ndarray, v: np.ndarray, soft: float) -> np.ndarray:
    """An irregular blob: a disc whose radius wobbles with a few random harmonics of the angle."""
    du, dv = u - layout.mass_centre[0], v - layout.mass_centre[1]
    harmonics = np.arange(2, 2 + _MASS_HARMONICS)[:, None, None]
    waves = np.cos(harmonics * np.arctan2(dv, du) + layout.mass_phases[:, None, None])
    wobble = (layout.mass_amplitudes[:, None, None] * waves).sum(axis=0)
    return _inside(layout.mass_radius * (1.0 + wobble) - np.hypot(du, dv), soft)


def _draw(layout: _Layout, labels: dict[str, int], size: int) -> Image.Image:
    """Render ``layout`` as an 8-bit greyscale radiograph, drawing only the findings labelled 1.

    Works on a density map (summed attenuation, 0..1) that is windowed to pixels at the end.
    """
    u, v = _body_coordinates(layout, size)
    soft = 3.0 / size
    body = _inside(1.0 - np.hypot(u / layout.body_radii[0], (v - 0.1) / layout.body_radii[1]), 0.04)
    mediastinum = _inside(0.1 - np.abs(u), soft)
    spine = _inside(0.055 - np.abs(u), soft)
    enlarged = labels["Cardiomegaly"]
    heart_width = layout.enlarged_heart_width if enlarged else layout.heart_radii[0]
    heart_height = layout.heart_radii[1] * (1.1 if enlarged else 1.0)
    heart_radius = np.hypot((u - layout.heart_centre[0]) / heart_width, (v - layout.heart_centre[1]) / heart_height)
    heart = _inside(1.0 - heart_radius, soft / heart_width)
    central = np.maximum(mediastinum, heart)

    lungs, lung_radius, air = {}, {}, {}
    for index, side in enumerate((-1, 1)):
        centre = (side * layout.lung_offset, layout.lung_centre_y)
        lung_radius[side] = _lung_radius(u, v, centre, layout.lung_radii)
        lateral = (u - centre[0]) / layout.lung_radii[0]
        dome = layout.dome_heights[index] + 0.28 * lateral * lateral
        lungs[side] = _inside((1.0 - lung_radius[side]) * layout.lung_radii[0], soft) * _inside(dome - v, soft)
        air[side] = lungs[side] * (1.0 - central)
    all_air = air[-1] + air[1]
    nearest_lung_radius = np.minimum(lung_radius[-1], lung_radius[1])

    crescent, pleural_line = (
        _pneumothorax(layout, u, v, air[layout.pneumothorax_side], soft, size)
        if labels["Pneumothorax"]
        else (0.0, 0.0)
    )
    hilum_weight = np.clip(1.3 - 0.8 * nearest_lung_radius, 0.3, 1.0)
    markings = (_upsample(layout.markings, size) - 0.5) * hilum_weight * all_air * (1.0 - crescent)
    rib_curve = v + 0.15 * np.abs(u) - 0.6 * u * u
    ribs = np.clip(np.cos(2 * np.pi * (rib_curve / layout.rib_spacing + layout.rib_phase)) - 0.4, 0.0, 0.6)
    ribs *= _inside(1.12 - nearest_lung_radius, 0.05) * _inside(np.abs(u) - 0.08, soft) * _inside(0.55 - v, 0.1)
    abdomen = _inside(v - (0.5 * (layout.dome_heights[0] + layout.dome_heights[1]) + 0.08), 0.15)

    density = 0.05 + (0.4 + 0.08 * abdomen + 0.16 * central + 0.1 * spine) * body
    density += 0.13 * ribs * (1.0 - 0.7 * central) * body
    density += 0.14 * markings - 0.3 * all_air - 0.1 * crescent + 0.2 * pleural_line
    if labels["Effusion"]:
        fluid = _effusion(layout, u, v, lungs[layout.effusion_side])
        density += fluid * (0.3 * (1.0 - central) + 0.08)
    if labels["Nodule"]:
        for (cu, cv), radius in zip(layout.nodule_centres[: layout.nodule_count], layout.nodule_radii):
            density += 0.3 * _inside(radius - np.hypot(u - cu, v - cv), soft)
    if labels["Mass"]:
        density += 0.34 * _mass(layout, u, v, soft)
    if labels["Opacity"]:
        patches = np.clip((_upsample(layout.opacity_field, size) - 0.3) / 0.35, 0.0, 1.0)
        density += (0.08 + 0.18 * patches) * air[layout.opacity_side]

    exposed = np.clip((density - 0.45) * layout.contrast + 0.45 + layout.brightness, 0.0, 1.0) ** layout.gamma
    pixels = np.clip((exposed + layout.pixel_noise) * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
    return Image.fromarray(pixels)


def _checked_labels(labels: dict[str, int]) -> dict[str, int]:
    """All findings as 0/1 ints; findings not given are 0, unknown names are an error."""
    for name in labels:
        if name not in PHANTOM_FINDINGS:
            raise unknown_name("phantom finding", name, PHANTOM_FINDINGS)
    return {name: int(bool(labels.get(name, 0))) for name in PHANTOM_FINDINGS}


def render_phantom(labels: dict[str, int], rng: np.random.Generator, size: int = 128) -> Image.Image:
    """Draw one size x size greyscale ("L") chest phantom showing the findings labelled 1 (missing ones count as 0).

    The same ``rng`` state gives the same anatomy whatever the labels, so findings can be compared in isolation.
    """
    return _draw(_sample_layout(rng, size), _checked_labels(labels), size)


def _side_word(side: int) -> str:
    """The patient's side for an image side (+1 is image right, the patient's left)."""
    return "left" if side > 0 else "right"


def _zone_word(v: float) -> str:
    """Lung zone for a vertical position in image units."""
    return "upper" if v < -0.25 else "mid" if v < 0.2 else "lower"


def _report(layout: _Layout, labels: dict[str, int]) -> str:
    """One-line radiology-style report consistent with the drawn findings and their sides."""
    sentences = ["Enlarged cardiac silhouette." if labels["Cardiomegaly"] else "Normal heart size."]
    if labels["Effusion"]:
        amount = "Small" if layout.effusion_level < 0.22 else "Moderate"
        sentences.append(f"{amount} {_side_word(layout.effusion_side)} basal pleural effusion.")
    if labels["Nodule"]:
        u, v = layout.nodule_centres[0]
        count = ("A small nodule", "Two small nodules including one", "Three small nodules including one")
        sentences.append(
            f"{count[layout.nodule_count - 1]} in the {_side_word(int(np.sign(u)))} {_zone_word(v)} zone."
        )
    if labels["Mass"]:
        u, v = layout.mass_centre
        sentences.append(f"Irregular mass in the {_side_word(int(np.sign(u)))} {_zone_word(v)} zone.")
    if labels["Pneumothorax"]:
        sentences.append(
            f"{_side_word(layout.pneumothorax_side).capitalize()} pneumothorax with visible pleural line."
        )
    if labels["Opacity"]:
        sentences.append(f"Patchy airspace opacity in the {_side_word(layout.opacity_side)} lung.")
    if not labels["Effusion"]:
        sentences.append("No pleural effusion.")
    if not labels["Pneumothorax"]:
        sentences.append("No pneumothorax.")
    return " ".join(sentences)


def _prevalences(prevalence: float | dict[str, float]) -> np.ndarray:
    """Per-finding probabilities in PHANTOM_FINDINGS order; a dict leaves unnamed findings at 0."""
    if isinstance(prevalence, dict):
        for name in prevalence:
            if name not in PHANTOM_FINDINGS:
                raise unknown_name("phantom finding", name, PHANTOM_FINDINGS)
        values = np.array([float(prevalence.get(name, 0.0)) for name in PHANTOM_FINDINGS])
    else:
        values = np.full(len(PHANTOM_FINDINGS), float(prevalence))
    if not np.all((values >= 0.0) & (values <= 1.0)):
        raise ConfigError(f"phantom prevalence must lie in [0, 1]; got {prevalence}")
    return values


def _iter_phantom_cases(
    n: int,
    seed: int,
    size: int,
    prevalence: float | dict[str, float] = _DEFAULT_PREVALENCE,
    images_per_patient: int = _DEFAULT_IMAGES_PER_PATIENT,
) -> Iterator[PhantomCase]:
    """Yield the cases of :func:`make_phantom_cases` one at a time, so large datasets need not fit in memory."""
    if n < 0 or images_per_patient < 1 or size < 16:
        raise ConfigError(
            f"need n >= 0, images_per_patient >= 1 and size >= 16; got n={n}, "
            f"images_per_patient={images_per_patient}, size={size}"
        )
    label_seed, image_seed = np.random.SeedSequence(seed).spawn(2)
    label_rng = np.random.default_rng(label_seed)
    present = label_rng.random((n, len(PHANTOM_FINDINGS))) < _prevalences(prevalence)
    for index, (row, child_seed) in enumerate(zip(present, image_seed.spawn(n))):
        labels = {name: int(flag) for name, flag in zip(PHANTOM_FINDINGS, row)}
        layout = _sample_layout(np.random.default_rng(child_seed), size)
        yield PhantomCase(
            image=_draw(layout, labels, size),
            labels=labels,
            report=_report(layout, labels),
            patient_id=f"phantom{seed}-{index // images_per_patient:05d}",
        )


def make_phantom_cases(
    n: int,
    seed: int = 0,
    size: int = 128,
    prevalence: float | dict[str, float] = _DEFAULT_PREVALENCE,
    images_per_patient: int = _DEFAULT_IMAGES_PER_PATIENT,
) -> list[PhantomCase]:
    """Make ``n`` phantoms with independently drawn labels; the same seed gives byte-identical images.

    Consecutive images share a patient (``images_per_patient`` each). Case i does not depend on ``n``.
    """
    return list(_iter_phantom_cases(n, seed, size, prevalence, images_per_patient))


def _replace_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(temp_path)`` on a temp file beside ``target``, then move it into place: no reader sees half a
    file."""
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(temp)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_phantom_dataset(out_dir: str | Path, n: int, seed: int = 0, size: int = 128, **kwargs) -> Path:
    """Write ``n`` phantoms as ``images/phantom_NNNNN.png`` plus ``labels.csv`` under ``out_dir``; return the CSV path.

    ``labels.csv`` has ``path`` (relative to ``out_dir``), ``patient_id``, ``report`` and one 0/1 column per finding.
    Extra keyword arguments go to :func:`make_phantom_cases`. The same arguments always give identical files.
    """
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, case in enumerate(_iter_phantom_cases(n, seed, size, **kwargs)):
        relative = f"images/phantom_{index:05d}.png"
        _replace_atomically(out_dir / relative, lambda temp, image=case.image: image.save(temp, format="PNG"))
        rows.append([relative, case.patient_id, case.report, *(case.labels[name] for name in PHANTOM_FINDINGS)])

    def write_csv(temp: Path) -> None:
        with open(temp, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream, lineterminator="\n")
            writer.writerow(["path", "patient_id", "report", *PHANTOM_FINDINGS])
            writer.writerows(rows)

    csv_path = out_dir / "labels.csv"
    _replace_atomically(csv_path, write_csv)
    return csv_path


def dicom_dataset(
    pixels: np.ndarray | None,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 16,
    transfer_syntax: str | None = None,
    **elements,
):
    """A minimal secondary-capture DICOM dataset (Part 10 meta, fresh UIDs, modality DX) holding unsigned ``pixels``
    (2-D, or frames x H x W; ``None`` leaves out the pixel data), for test and benchmark inputs. ``transfer_syntax``
    defaults to explicit VR little endian; ``elements`` set further attributes after the pixels (``Modality``,
    ``PatientName``, ``WindowCenter``, even ``Rows`` to make the header lie). Save with
    ``save_as(target, enforce_file_format=True)``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    if pixels is not None:
        dataset.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=bits_stored)
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    return dataset


def png_claiming_size(width: int, height: int) -> bytes:
    """A greyscale PNG whose header declares ``width`` x ``height`` pixels but holds one tiny deflated row: a
    decompression bomb's shape, for tests of ``DecodeLimits`` (Pillow reads the size before any pixel)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(
        b"IEND", b""
    )


MASK_PHANTOM_STRUCTURES = ("lungs", "nodule")


def write_mask_phantoms(out_dir: str | Path, n: int, seed: int = 0, size: int = 64) -> Path:
    """Write ``n`` segmentation phantoms and a cxr-seg-style ``masks.csv`` (``mask_lungs``, ``mask_nodule``) under
    ``out_dir``; return the CSV path.

    Each image has two dark elliptical "lungs" (mask 255, with a 127 "ignore" square on every third image) and, on
    half the images, a bright "nodule" (an empty nodule mask on the others: annotated, absent). Every fourth image
    has no nodule annotation at all (blank cell). Two images per patient; the same arguments give identical files.
    """
    out_dir = Path(out_dir)
    for folder in ("images", "masks"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows_, cols_ = np.mgrid[0:size, 0:size] / size
    rows = []
    for index in range(n):
        centre_y, spread = rng.uniform(0.4, 0.6), rng.uniform(0.18, 0.24)
        radii = (rng.uniform(0.25, 0.32), rng.uniform(0.1, 0.14))
        lungs = np.zeros((size, size), dtype=bool)
        for centre_x in (0.5 - spread, 0.5 + spread):
            lungs |= ((rows_ - centre_y) / radii[0]) ** 2 + ((cols_ - centre_x) / radii[1]) ** 2 <= 1
        nodule = np.zeros_like(lungs)
        if index % 2 == 0:
            y, x = rng.uniform(0.2, 0.8, size=2)
            nodule = (rows_ - y) ** 2 + (cols_ - x) ** 2 <= rng.uniform(0.06, 0.09) ** 2
        pixels = 0.75 - 0.45 * lungs + 0.5 * nodule + rng.normal(0, 0.04, (size, size))
        image = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8))
        lung_mask = np.where(lungs, 255, 0).astype(np.uint8)
        if index % 3 == 0:
            lung_mask[size // 2 - 2 : size // 2 + 2, size // 4 - 2 : size // 4 + 2] = 127
        stem = f"mask_phantom_{index:05d}"
        files = {"images": image, "lungs": Image.fromarray(lung_mask),
                 "nodule": Image.fromarray(np.where(nodule, 255, 0).astype(np.uint8))}
        relative = {"images": f"images/{stem}.png", "lungs": f"masks/{stem}_lungs.png",
                    "nodule": f"masks/{stem}_nodule.png"}
        for key, picture in files.items():
            _replace_atomically(out_dir / relative[key], lambda temp, p=picture: p.save(temp, format="PNG"))
        nodule_cell = "" if index % 4 == 3 else relative["nodule"]
        rows.append([relative["images"], f"p{index // 2}", relative["lungs"], nodule_cell])

    def write_csv(temp: Path) -> None:
        with open(temp, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream, lineterminator="\n")
            writer.writerow(["path", "patient_id", *(f"mask_{name}" for name in MASK_PHANTOM_STRUCTURES)])
            writer.writerows(rows)

    csv_path = out_dir / "masks.csv"
    _replace_atomically(csv_path, write_csv)
    return csv_path
