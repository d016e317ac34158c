"""Segmentation mask readers: cxr-seg's ``masks.csv``, SIIM's run-length CSV and a folder of masks named like the
images, behind one registry (``MASK_READERS``).

Every reader returns a ``MaskTable``: one row per image with its patient, size and, per structure, where its mask is
(a PNG path or a run-length string), or ``""`` when that structure was not annotated on that image (which is not the
same as an annotated, empty mask). Sizes, paths and columns are checked when the table is read; a mask's pixel
values when it is decoded (``load_mask``). Every problem is one ``DataError`` line naming the file and row.

Decoded masks are int8: 1 = structure, 0 = background, -1 = ignore (value 127 in cxr-seg's V7 lung masks: devices
lying over the lung), which losses and scores leave out.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from PIL import Image

from retune.data.images import DEFAULT_LIMITS, is_dicom, regular_file_size
from retune.data.readers import _patient_ids, _raise_first_bad, _read_csv, _require_columns, _resolve_paths
from retune.data.table import PATH_COLUMN, PATIENT_COLUMN, ImageTable
from retune.errors import DataError, unknown_name

MASK_PREFIX = "mask_"
IGNORE_VALUE = 127  # cxr-seg (V7 Labs): pixels to leave out of the loss and the score
IGNORE = -1  # the same pixels in a decoded mask
WIDTH_COLUMN, HEIGHT_COLUMN = "width", "height"
ROW_COLUMN = "source_row"  # the spreadsheet row (header = 1) or file the row came from, for error messages
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff")
SIIM_STRUCTURE = "pneumothorax"
_RLE_PREFIX = "rle:"
_ALLOWED_VALUES = ({0, 255, IGNORE_VALUE}, {0, 1})  # 0/255 (+127 ignore) masks, or 0/1 masks


@dataclass
class MaskTable(ImageTable):
    """Images (an ``ImageTable`` without classes) with per-structure mask references.

    ``frame`` also has ``width``, ``height`` and one column per structure holding the mask's path,
    ``rle:<run-length string>``, or ``""`` (not annotated). ``source`` names the file errors point at.
    """

    structures: list[str] = field(default_factory=list)

    def annotated(self, structure: str) -> np.ndarray:
        """Boolean per row: the structure was annotated on that image (its mask may still be empty)."""
        return (self.frame[structure] != "").to_numpy()

    def subset(self, rows: np.ndarray | list[int]) -> MaskTable:
        frame = self.frame.iloc[np.asarray(rows, dtype=int)].reset_index(drop=True)
        return MaskTable(frame, [], self.source, extra=dict(self.extra), structures=list(self.structures))

    def only(self, structures: list[str]) -> MaskTable:
        """The table restricted to ``structures`` (an unknown name is a ConfigError listing the known ones)."""
        for name in structures:
            if name not in self.structures:
                raise unknown_name("structure", name, self.structures)
        keep = [PATH_COLUMN, PATIENT_COLUMN, WIDTH_COLUMN, HEIGHT_COLUMN, ROW_COLUMN, *structures]
        return MaskTable(self.frame[keep].copy(), [], self.source, extra=dict(self.extra), structures=list(structures))

    def load_mask(self, row: int, structure: str) -> np.ndarray | None:
        """The decoded int8 mask (height x width; 1 / 0 / -1 ignore) of ``structure`` on ``row``, None if not
        annotated."""
        reference = self.frame.at[row, structure]
        if reference == "":
            return None
        size = (int(self.frame.at[row, WIDTH_COLUMN]), int(self.frame.at[row, HEIGHT_COLUMN]))
        where = f"{self.source.name} row {self.frame.at[row, ROW_COLUMN]}, structure '{structure}'"
        if reference.startswith(_RLE_PREFIX):
            return decode_siim_rle(reference.removeprefix(_RLE_PREFIX), size, where)
        return decode_mask_png(Path(reference), size, where)


MaskReader = Callable[..., MaskTable]
MASK_READERS: dict[str, MaskReader] = {}
_DETECTORS: dict[str, Callable[[Path, set[str]], bool]] = {}


def register_mask_reader(name: str, detect: Callable[[Path, set[str]], bool]) -> Callable[[MaskReader], MaskReader]:
    """Register a mask reader under ``name``; ``detect(path, header columns)`` lets ``auto`` pick it."""

    def decorator(reader: MaskReader) -> MaskReader:
        MASK_READERS[name] = reader
        _DETECTORS[name] = detect
        return reader

    return decorator


def read_masks(path: str | Path, format: str = "auto", image_root: str | Path | None = None) -> MaskTable:
    """Read a mask table with the named reader, or the one its layout shows (``auto``)."""
    path = Path(path)
    if format == "auto":
        columns = set() if path.is_dir() else set(_read_csv(path, header_only=True).columns)
        found = [name for name, detect in _DETECTORS.items() if detect(path, columns)]
        if not found:
            raise DataError(
                f"{path}: unknown mask layout (expected a CSV with mask_* columns, a SIIM CSV with ImageId and "
                "EncodedPixels, or a folder of masks)"
            )
        format = found[0]
    if format not in MASK_READERS:
        raise unknown_name("mask format", format, list(MASK_READERS))
    return MASK_READERS[format](path, image_root=image_root)


@register_mask_reader(
    "masks_csv", detect=lambda path, columns: any(column.startswith(MASK_PREFIX) for column in columns)
)
def read_masks_csv(path: Path, image_root: str | Path | None = None) -> MaskTable:
    """cxr-seg's layout: ``path``, ``patient_id`` and one ``mask_<structure>`` column per structure (a PNG path of
    the image's size; blank = not annotated). Paths resolve against ``image_root`` (default: the CSV's folder)."""
    source = path.name
    raw = _read_csv(path)
    _require_columns(raw, ["path"], source)
    columns = [column for column in raw.columns if column.startswith(MASK_PREFIX)]
    if not columns:
        raise DataError(f"{source}: no {MASK_PREFIX}* column (columns: {', '.join(raw.columns)})")
    root = Path(image_root or path.parent).expanduser().resolve()
    frame = pd.DataFrame({PATH_COLUMN: _resolve_paths(raw["path"], root, source, "path"), ROW_COLUMN: raw.index + 2})
    has_patients = PATIENT_COLUMN in raw.columns
    frame[PATIENT_COLUMN] = (
        _patient_ids(raw[PATIENT_COLUMN], source, PATIENT_COLUMN) if has_patients else frame[PATH_COLUMN]
    )
    _add_image_sizes(frame, source)
    structures = [column.removeprefix(MASK_PREFIX) for column in columns]
    for column, structure in zip(columns, structures):
        values = raw[column].str.strip()
        annotated = values != ""
        resolved = pd.Series("", index=raw.index, dtype=object)
        if annotated.any():
            resolved[annotated] = _resolve_paths(values[annotated], root, source, column)
        frame[structure] = resolved
        _check_mask_files(frame, structure, source, column)
    return MaskTable(frame, [], path, structures=structures)


@register_mask_reader(
    "siim_rle", detect=lambda path, columns: {"ImageId", "EncodedPixels"} <= {c.strip() for c in columns}
)
def read_siim_rle(path: Path, image_root: str | Path | None = None) -> MaskTable:
    """SIIM-ACR pneumothorax: ``ImageId, EncodedPixels`` (``-1`` = no pneumothorax; several rows of one image are
    united). Images are ``<ImageId>.<png|jpg|dcm>`` under ``image_root`` (default: the CSV's folder); each image is
    its own patient unless a ``patient_id`` column says otherwise."""
    source = path.name
    raw = _read_csv(path)
    _require_columns(raw, ["ImageId", "EncodedPixels"], source)
    root = Path(image_root or path.parent).expanduser().resolve()
    ids = raw["ImageId"].str.strip()
    _raise_first_bad(ids == "", ids, source, "ImageId", "is blank; an image id is required")
    encoded = raw["EncodedPixels"].str.strip()
    bad = ~encoded.str.fullmatch(r"-1|\d+(\s+\d+)*") | (encoded.str.split().str.len() % 2 == 1) & (encoded != "-1")
    _raise_first_bad(bad, encoded, source, "EncodedPixels", "is not a run-length string (pairs of numbers, or -1)")
    runs: dict[str, list[str]] = {}
    patients: dict[str, str] = {}
    first_rows: dict[str, int] = {}
    for row, (image_id, value) in enumerate(zip(ids, encoded)):
        runs.setdefault(image_id, [])
        first_rows.setdefault(image_id, row + 2)
        if value != "-1":
            runs[image_id].append(value)
        patient = raw[PATIENT_COLUMN].iat[row].strip() if PATIENT_COLUMN in raw.columns else image_id
        patients.setdefault(image_id, patient)
    image_paths = []
    for image_id, row in first_rows.items():
        found = _find_image(root, image_id)
        if found is None:
            raise DataError(f"{source} row {row}, column 'ImageId': no image '{image_id}.*' under {root}")
        image_paths.append(str(found))
    frame = pd.DataFrame(
        {PATH_COLUMN: image_paths, PATIENT_COLUMN: list(patients.values()), ROW_COLUMN: list(first_rows.values())}
    )
    _add_image_sizes(frame, source)
    frame[SIIM_STRUCTURE] = [_RLE_PREFIX + "|".join(values) for values in runs.values()]
    return MaskTable(frame, [], path, structures=[SIIM_STRUCTURE])


@register_mask_reader("mask_folder", detect=lambda path, columns: path.is_dir())
def read_mask_folder(path: Path, image_root: str | Path | None = None) -> MaskTable:
    """A folder of masks named like the images (``<stem>.png`` for image ``<stem>.<ext>``); the structure is the
    folder's name. ``image_root`` is the image folder (required); every image needs its mask."""
    if image_root is None:
        raise DataError(f"{path}: a mask folder needs the image folder (image_root / --image-root)")
    root = Path(image_root).expanduser().resolve()
    images = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)})")
    structure = path.resolve().name
    frame = pd.DataFrame(
        {
            PATH_COLUMN: [str(p) for p in images],
            PATIENT_COLUMN: [p.stem for p in images],
            ROW_COLUMN: range(1, len(images) + 1),
        }
    )
    _add_image_sizes(frame, path.name)
    frame[structure] = [str(path.resolve() / f"{p.stem}.png") for p in images]
    _check_mask_files(frame, structure, path.name, f"{structure}/<image name>.png")
    return MaskTable(frame, [], path, structures=[structure])


def check_mask_file(path: str | Path, where: str) -> None:
    """A mask must be an existing regular file within the image size limit: a FIFO or ``/dev/zero`` is refused in
    one line naming ``where`` before anything opens it, so nothing blocks or reads forever."""
    if not os.path.lexists(path):
        raise DataError(f"{where}: mask {path} does not exist")
    try:
        regular_file_size(path)
    except DataError as error:
        raise DataError(f"{where}: mask {error}") from None


def decode_mask_png(path: Path, size: tuple[int, int], where: str) -> np.ndarray:
    """A PNG mask as int8 (1 / 0 / -1 ignore); its size must be ``size`` (width, height) and its values 0/255
    (127 = ignore) or 0/1."""
    check_mask_file(path, where)
    try:
        with Image.open(path) as image:
            image.load()
            mode, actual = image.mode, image.size
            values = np.asarray(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{where}: mask {path} cannot be read ({error})") from None
    if actual != size:
        raise DataError(f"{where}: mask {path} is {actual[0]} x {actual[1]}, its image {size[0]} x {size[1]}")
    if mode not in ("L", "1"):
        raise DataError(f"{where}: mask {path} is {mode}; expected one 8-bit channel (0/255, 127 = ignore)")
    present = set(np.unique(values).tolist())
    if not any(present <= allowed for allowed in _ALLOWED_VALUES):
        odd = sorted(present - _ALLOWED_VALUES[0])[:5]
        raise DataError(f"{where}: mask {path} has values {odd}; expected 0/255 (127 = ignore) or 0/1")
    mask = (values > 0).astype(np.int8)
    mask[values == IGNORE_VALUE] = IGNORE
    return mask


def decode_siim_rle(encoded: str, size: tuple[int, int], where: str) -> np.ndarray:
    """SIIM's run-length masks (``|``-joined instances; each pairs of relative start and length, column-major) as
    one int8 mask of ``size`` (width, height)."""
    width, height = size
    flat = np.zeros(width * height, dtype=np.int8)
    for instance in filter(None, encoded.split("|")):
        numbers = np.asarray(instance.split(), dtype=np.int64)
        position = 0
        for start, length in zip(numbers[0::2], numbers[1::2]):
            position += start
            if position + length > flat.size:
                raise DataError(f"{where}: run-length mask runs past the image's {width} x {height} pixels")
            flat[position : position + length] = 1
            position += length
    return flat.reshape(width, height).T.copy()


def encode_siim_rle(mask: np.ndarray) -> str:
    """The SIIM run-length string of a binary mask (``-1`` when empty); inverse of ``decode_siim_rle``."""
    flat = (np.asarray(mask).T.reshape(-1) > 0).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [0]])))
    if not len(edges):
        return "-1"
    starts, ends = edges[0::2], edges[1::2]
    relative = starts - np.concatenate([[0], ends[:-1]])
    return " ".join(f"{s} {e - b}" for s, b, e in zip(relative, starts, ends))


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image from its header (PNG/JPEG or DICOM), within the decode limits."""
    path = Path(path)
    try:
        if is_dicom(path):
            header = pydicom.dcmread(path, stop_before_pixels=True)
            width, height = int(header.Columns), int(header.Rows)
        else:
            with Image.open(path) as image:
                width, height = image.size
    except FileNotFoundError:
        raise DataError(f"{path}: image does not exist") from None
    except (OSError, SyntaxError, ValueError, AttributeError, pydicom.errors.InvalidDicomError) as error:
        raise DataError(f"{path}: image cannot be read ({error})") from None
    DEFAULT_LIMITS.check_shape(path, width, height)
    return width, height


def _add_image_sizes(frame: pd.DataFrame, source: str) -> None:
    """Width and height columns from each image's header; a missing or absurd image names its row."""
    sizes = []
    for row, path in zip(frame[ROW_COLUMN], frame[PATH_COLUMN]):
        try:
            sizes.append(image_size(path))
        except DataError as error:
            raise DataError(f"{source} row {row}: {error}") from None
    frame[WIDTH_COLUMN] = [width for width, _ in sizes]
    frame[HEIGHT_COLUMN] = [height for _, height in sizes]


def _check_mask_files(frame: pd.DataFrame, structure: str, source: str, column: str) -> None:
    """Every annotated mask exists and has its image's size (read from the PNG header, not decoded)."""
    for position, (row, reference) in enumerate(zip(frame[ROW_COLUMN], frame[structure])):
        if reference == "":
            continue
        where = f"{source} row {row}, column '{column}'"
        check_mask_file(reference, where)
        try:
            with Image.open(reference) as image:
                width, height = image.size
        except (OSError, SyntaxError, ValueError) as error:
            raise DataError(f"{where}: mask {reference} cannot be read ({error})") from None
        expected = (int(frame.at[position, WIDTH_COLUMN]), int(frame.at[position, HEIGHT_COLUMN]))
        if (width, height) != expected:
            raise DataError(
                f"{where}: mask {reference} is {width} x {height}, its image {expected[0]} x {expected[1]}"
            )


def _find_image(root: Path, image_id: str) -> Path | None:
    """``root/<image_id>.<ext>`` for the first known image suffix that exists (ids are plain names, no paths)."""
    if not re.fullmatch(r"[\w.\-]+", image_id) or image_id.startswith("."):
        return None
    for suffix in IMAGE_SUFFIXES:
        candidate = root / f"{image_id}{suffix}"
        if candidate.is_file():
            return candidate
    return None
