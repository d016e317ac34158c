"""Image decoding: PNG, JPEG and DICOM files in, 8-bit RGB PIL images out (what backbones expect)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pydicom.errors
from PIL import Image, UnidentifiedImageError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from retune.errors import DataError

DICOM_SUFFIXES = {".dcm", ".dicom"}
_DICOM_MAGIC_OFFSET = 128
_HASH_CHUNK = 1 << 20
_LUT_MAX_LEVELS = 1 << 16  # integer images with at most this many grey levels are scaled through a lookup table

# What PIL raises for unreadable, truncated or corrupt files (broken PNG chunks raise SyntaxError).
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
# pydicom has no single base error: bad headers, missing or short pixel data and unsupported
# transfer syntaxes surface as these.
_DICOM_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    KeyError,
    NotImplementedError,
    RuntimeError,
)


def load_image(path: str | Path) -> Image.Image:
    """Decode a PNG, JPEG or DICOM file fully into an 8-bit RGB image.

    Raises ``DataError("<path>: <reason>")`` for missing, empty, truncated or corrupt files.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    if size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    if is_dicom(path):
        return _load_dicom(path)
    return _load_raster(path)


def is_dicom(path: str | Path) -> bool:
    """True for a ``.dcm``/``.dicom`` suffix or the ``DICM`` magic at byte 128 (DICOM Part 10)."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as handle:
            head = handle.read(_DICOM_MAGIC_OFFSET + 4)
    except OSError:
        return False
    return head[_DICOM_MAGIC_OFFSET:] == b"DICM"


def file_content_hash(path: str | Path) -> str:
    """SHA-256 hex digest of the file's bytes, read in 1 MiB chunks (identifies an image by content)."""
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as handle:
            for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
                digest.update(chunk)
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    return digest.hexdigest()


def _load_raster(path: Path) -> Image.Image:
    """Decode with PIL, forcing a full decode so truncated files fail here rather than later."""
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb8(img)
    except UnidentifiedImageError as exc:
        raise DataError(f"{path}: not a recognised image format") from exc
    except _PIL_ERRORS as exc:
        raise DataError(f"{path}: cannot decode image ({_first_line(exc)})") from exc


def _to_rgb8(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; 16-bit/int/float greyscale is min-max scaled, not clipped."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _grey_to_rgb(_scale_to_uint8(np.asarray(img)))
    if img.mode == "RGB":
        return img.copy()
    return img.convert("RGB")


def _load_dicom(path: Path) -> Image.Image:
    """Decode the first frame: modality LUT, then VOI LUT/windowing, scale to 0-255, invert MONOCHROME1."""
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except pydicom.errors.InvalidDicomError as exc:
        raise DataError(f"{path}: not a DICOM file (no 'DICM' file header)") from exc
    except _DICOM_ERRORS as exc:
        raise DataError(f"{path}: cannot decode DICOM ({_first_line(exc)})") from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        # pixel_array already converts YBR colour to RGB.
        rgb = pixels if pixels.dtype == np.uint8 else _scale_to_uint8(pixels)
        return Image.fromarray(np.ascontiguousarray(rgb))
    if pixels.ndim != 2:
        raise DataError(f"{path}: unsupported DICOM pixel array shape {pixels.shape}")
    values = apply_modality_lut(pixels, ds)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        try:
            values = apply_voi_lut(values, ds)
        except (ValueError, TypeError, IndexError, KeyError):
            pass  # an unusable VOI/window falls back to the min-max scaling below
    grey = _scale_to_uint8(values)
    if ds.get("PhotometricInterpretation", "") == "MONOCHROME1":
        grey = 255 - grey
    return _grey_to_rgb(grey)


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Min-max scale any numeric array to uint8 in float math; a constant image becomes all zeros.

    Integer images (DICOM pixel data: 12-16 bits) go through a lookup table holding this very float formula for
    each of their levels: the same bytes as scaling every pixel in float64, at a fraction of the passes.
    """
    values = np.asarray(values)
    if values.dtype.kind in "ui" and values.size > _LUT_MAX_LEVELS:
        low, high = int(values.min()), int(values.max())
        if high - low < _LUT_MAX_LEVELS:
            return _scale_to_uint8(np.arange(low, high + 1))[np.subtract(values, low, dtype=np.int32)]
    values = np.asarray(values, dtype=np.float64)
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    if not high > low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(np.nan_to_num(scaled, nan=0.0)), 0, 255).astype(np.uint8)


def _first_line(exc: Exception) -> str:
    """The first line of an exception's message (error messages here stay one line)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    """Replicate one uint8 channel into an RGB image."""
    return Image.fromarray(np.ascontiguousarray(grey)).convert("RGB")
