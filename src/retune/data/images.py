"""Image decoding: PNG, JPEG and DICOM files in, 8-bit RGB PIL images out (what backbones expect)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
import pydicom.errors
from PIL import Image, UnidentifiedImageError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from retune.errors import DataError

DICOM_SUFFIXES = {".dcm", ".dicom"}
_DICOM_MAGIC_OFFSET = 128
_HASH_CHUNK = 1 << 20

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
        return _load_dicom(path, str(path))
    return _load_raster(path, str(path))


def decode_image_bytes(data: bytes, name: str) -> Image.Image:
    """Decode an image held in memory (an upload: never written to disk) like ``load_image``; ``name`` labels errors.

    DICOM is recognised by a ``.dcm``/``.dicom`` name or the ``DICM`` magic; anything else goes to Pillow.
    """
    if not data:
        raise DataError(f"{name}: empty file (0 bytes)")
    if Path(name).suffix.lower() in DICOM_SUFFIXES or data[_DICOM_MAGIC_OFFSET:_DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return _load_dicom(io.BytesIO(data), name)
    return _load_raster(io.BytesIO(data), name)


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


def _load_raster(source: Path | BinaryIO, name: str) -> Image.Image:
    """Decode with PIL, forcing a full decode so truncated files fail here rather than later.

    Pillow's decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``) refuses huge images before decoding them.
    """
    try:
        with Image.open(source) as img:
            img.load()
            return _to_rgb8(img)
    except UnidentifiedImageError as exc:
        raise DataError(f"{name}: not a recognised image format") from exc
    except _PIL_ERRORS as exc:
        raise DataError(f"{name}: cannot decode image ({_first_line(exc)})") from exc


def _to_rgb8(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; 16-bit/int/float greyscale is min-max scaled, not clipped."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _grey_to_rgb(_scale_to_uint8(np.asarray(img)))
    if img.mode == "RGB":
        return img.copy()
    return img.convert("RGB")


def _load_dicom(source: Path | BinaryIO, name: str) -> Image.Image:
    """Decode the first frame: modality LUT, then VOI LUT/windowing, scale to 0-255, invert MONOCHROME1.

    Pixel data larger than Pillow's decompression-bomb limit is refused before it is decoded.
    """
    try:
        ds = pydicom.dcmread(source)
        _refuse_dicom_bomb(ds, name)
        pixels = ds.pixel_array
    except pydicom.errors.InvalidDicomError as exc:
        raise DataError(f"{name}: not a DICOM file (no 'DICM' file header)") from exc
    except _DICOM_ERRORS as exc:
        raise DataError(f"{name}: cannot decode DICOM ({_first_line(exc)})") from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        # pixel_array already converts YBR colour to RGB.
        rgb = pixels if pixels.dtype == np.uint8 else _scale_to_uint8(pixels)
        return Image.fromarray(np.ascontiguousarray(rgb))
    if pixels.ndim != 2:
        raise DataError(f"{name}: unsupported DICOM pixel array shape {pixels.shape}")
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


def _refuse_dicom_bomb(ds: pydicom.Dataset, name: str) -> None:
    """Refuse DICOM pixel data above twice ``Image.MAX_IMAGE_PIXELS`` (where Pillow refuses rasters)."""
    limit = Image.MAX_IMAGE_PIXELS
    n_pixels = int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * int(ds.get("NumberOfFrames", 1) or 1)
    if limit is not None and n_pixels > 2 * limit:
        raise DataError(
            f"{name}: DICOM of {n_pixels} pixels exceeds the limit of {2 * limit} pixels (possible decompression bomb)"
        )


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Min-max scale any numeric array to uint8 in float math; a constant image becomes all zeros."""
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
