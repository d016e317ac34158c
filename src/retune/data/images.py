"""Image decoding: PNG, JPEG and DICOM files in, 8-bit RGB PIL images out (what backbones expect)."""

from __future__ import annotations

import hashlib
import io
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
import pydicom.errors
from PIL import Image, UnidentifiedImageError
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import DeflatedExplicitVRLittleEndian

from retune.errors import DataError
from retune.io_utils import regular_file_size as checked_file_size

DICOM_SUFFIXES = {".dcm", ".dicom"}
_DICOM_MAGIC_OFFSET = 128
_HASH_CHUNK = 1 << 20
_LOOKUP_BLOCK = 1 << 18  # pixels per block of a table lookup: 2 MiB of widened indices
_LUT_MAX_LEVELS = 1 << 16  # integer images with at most this many grey levels are scaled through a lookup table
_MAX_BYTES_PER_PIXEL = 8  # 64-bit float or 3 x 16-bit samples
_DICOM_HEADER_ALLOWANCE = 1 << 24


@dataclass(frozen=True)
class DecodeLimits:
    """What one image may cost, checked from the file system and the image header before any pixel is decoded.

    ``max_bytes`` bounds every read (hashing and decoding); ``max_pixels`` bounds one frame's width x height;
    ``max_aspect_ratio`` bounds long side / short side, since preprocessing that scales the short side up
    would turn a 20000 x 1 strip into a billion pixels.
    """

    max_bytes: int = 1 << 30
    max_pixels: int = 1 << 25
    max_aspect_ratio: float = 20.0

    def check_shape(self, path: Path, width: int, height: int) -> None:
        """Raise DataError when a ``width`` x ``height`` image breaks the pixel or aspect-ratio limit."""
        if width <= 0 or height <= 0:
            raise DataError(f"{path}: image has no pixels ({width} x {height})")
        if width * height > self.max_pixels:
            raise DataError(
                f"{path}: image of {width} x {height} pixels is over the pixel budget of {self.max_pixels}"
            )
        if max(width, height) / min(width, height) > self.max_aspect_ratio:
            raise DataError(f"{path}: image of {width} x {height} pixels is more elongated than the limit "
                            f"({self.max_aspect_ratio:g}:1); preprocessing would blow it up")


DEFAULT_LIMITS = DecodeLimits()

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
    zlib.error,
)


def load_image(path: str | Path, limits: DecodeLimits = DEFAULT_LIMITS) -> Image.Image:
    """Decode a PNG, JPEG or DICOM file fully into an 8-bit RGB image, within ``limits``.

    Raises ``DataError("<path>: <reason>")`` for missing, empty, non-regular, oversized, truncated or corrupt files.
    """
    path = Path(path)
    regular_file_size(path, limits)
    if is_dicom(path):
        return _load_dicom(path, path, limits)
    return _load_raster(path, path, limits)


def decode_image_bytes(data: bytes, name: str, limits: DecodeLimits = DEFAULT_LIMITS) -> Image.Image:
    """Decode an image held in memory (an upload: never written to disk) like ``load_image``; ``name`` (the
    client's file name, never opened) labels errors. DICOM is recognised by its suffix or the ``DICM`` magic."""
    if _is_dicom_upload(data, name, limits):
        return _load_dicom(io.BytesIO(data), name, limits)
    return _load_raster(io.BytesIO(data), name, limits)


def _is_dicom_upload(data: bytes, name: str, limits: DecodeLimits) -> bool:
    """Whether an upload is DICOM (suffix or ``DICM`` magic), after refusing an empty or oversized one."""
    if not data:
        raise DataError(f"{name}: empty file (0 bytes)")
    if len(data) > limits.max_bytes:
        raise DataError(f"{name}: file of {len(data)} bytes is over the size limit of {limits.max_bytes} bytes")
    return Path(name).suffix.lower() in DICOM_SUFFIXES or data[_DICOM_MAGIC_OFFSET:_DICOM_MAGIC_OFFSET + 4] == b"DICM"


def declared_pixels(data: bytes, name: str, limits: DecodeLimits = DEFAULT_LIMITS) -> int:
    """Width x height an image held in memory declares in its header, read without decoding any pixel (what decoding
    it will cost, for a budget across many images); a header that cannot be read is a DataError naming ``name``."""
    source = io.BytesIO(data)
    dicom = _is_dicom_upload(data, name, limits)
    try:
        if dicom:
            _check_deflated_size(source, name, limits)
            header = pydicom.dcmread(source, stop_before_pixels=True)
            return int(header.get("Columns") or 0) * int(header.get("Rows") or 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # only the header is read here
            with Image.open(source) as img:
                return img.size[0] * img.size[1]
    except UnidentifiedImageError as exc:
        raise DataError(f"{name}: not a recognised image format") from exc
    except (*_DICOM_ERRORS, *_PIL_ERRORS, pydicom.errors.InvalidDicomError) as exc:
        raise DataError(f"{name}: cannot read the image header ({_one_line(exc)})") from exc


def regular_file_size(path: str | Path, limits: DecodeLimits = DEFAULT_LIMITS) -> int:
    """The size of a non-empty regular image file within ``limits.max_bytes`` (``retune.io_utils.regular_file_size``:
    a directory, a FIFO, ``/dev/zero`` or an unreadable file is a DataError, so no read can block or run forever)."""
    return checked_file_size(path, limits.max_bytes, "image file")


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


def file_content_hash(path: str | Path, limits: DecodeLimits = DEFAULT_LIMITS) -> str:
    """SHA-256 hex digest of a regular file's bytes, read in 1 MiB chunks and never past ``limits.max_bytes``
    (identifies an image by content)."""
    regular_file_size(path, limits)
    digest = hashlib.sha256()
    remaining = limits.max_bytes + 1
    try:
        with Path(path).open("rb") as handle:
            while remaining > 0 and (chunk := handle.read(min(_HASH_CHUNK, remaining))):
                digest.update(chunk)
                remaining -= len(chunk)
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    if remaining <= 0:
        raise DataError(f"{path}: file grew over the size limit of {limits.max_bytes} bytes while being read")
    return digest.hexdigest()


def _load_raster(source: Path | BinaryIO, path: Path | str, limits: DecodeLimits) -> Image.Image:
    """Check the header's size against ``limits``, then decode with PIL in full so truncated files fail here.

    Pillow's DecompressionBombWarning becomes this error instead of a line on stderr.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                limits.check_shape(path, *img.size)
                img.load()
                return _to_rgb8(img)
    except UnidentifiedImageError as exc:
        raise DataError(f"{path}: not a recognised image format") from exc
    except Image.DecompressionBombWarning as exc:
        raise DataError(f"{path}: refused as a possible decompression bomb ({_first_line(exc)})") from exc
    except _PIL_ERRORS as exc:
        raise DataError(f"{path}: cannot decode image ({_first_line(exc)})") from exc


def _to_rgb8(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; 16-bit/int/float greyscale is min-max scaled, not clipped."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _grey_to_rgb(_scale_to_uint8(np.asarray(img)))
    if img.mode == "RGB":
        return img.copy()
    return img.convert("RGB")


def _load_dicom(source: Path | BinaryIO, path: Path | str, limits: DecodeLimits) -> Image.Image:
    """Decode the first frame only: modality LUT, then VOI LUT/windowing, scale to 0-255, invert MONOCHROME1.

    Rows x Columns are checked against ``limits`` before the pixel data is read (it is deferred until then).
    """
    try:
        _check_deflated_size(source, path, limits)
        ds = pydicom.dcmread(source, defer_size="64 KB")
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            raise DataError(f"{path}: DICOM file holds no image (no Pixel Data element)")
        limits.check_shape(path, int(ds.get("Columns") or 0), int(ds.get("Rows") or 0))
        ds.pixel_array_options(index=0)  # decode one frame, not the whole multi-frame volume
        pixels = ds.pixel_array
    except pydicom.errors.InvalidDicomError as exc:
        raise DataError(f"{path}: not a DICOM file (no 'DICM' file header)") from exc
    except _DICOM_ERRORS as exc:
        raise DataError(f"{path}: cannot decode DICOM ({_one_line(exc)})") from exc
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        # pixel_array already converts YBR colour to RGB.
        rgb = pixels if pixels.dtype == np.uint8 else _scale_to_uint8(pixels)
        return Image.fromarray(np.ascontiguousarray(rgb))
    if pixels.ndim != 2:
        raise DataError(f"{path}: unsupported DICOM pixel array shape {pixels.shape}")
    grey = _scale_to_uint8(_windowed(apply_modality_lut(pixels, ds), ds))  # no name holds the float64 copies
    del pixels
    if ds.get("PhotometricInterpretation", "") == "MONOCHROME1":
        grey = 255 - grey
    return _grey_to_rgb(grey)


def _check_deflated_size(source: Path | BinaryIO, path: Path | str, limits: DecodeLimits) -> None:
    """Refuse a deflated DICOM whose inflated dataset is larger than the pixel budget can need, counting it in
    constant memory: pydicom inflates the whole dataset before its header can be read (a 141 KB file can hold
    a 12000 x 12000 image)."""
    if isinstance(source, Path):
        meta = pydicom.filereader.read_file_meta_info(source)
    else:  # what read_file_meta_info does with the file it opens
        with _rewound(source) as handle:
            pydicom.filereader.read_preamble(handle, False)
            meta = pydicom.filereader._read_file_meta_info(handle)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return
    with open(source, "rb") if isinstance(source, Path) else _rewound(source) as handle:
        handle.seek(_DICOM_MAGIC_OFFSET + 4)
        group = handle.read(12)  # (0002,0000) UL: the length of the rest of the file meta group
        handle.seek(_DICOM_MAGIC_OFFSET + 4 + len(group) + int.from_bytes(group[8:12], "little"))
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        allowed = limits.max_pixels * _MAX_BYTES_PER_PIXEL + _DICOM_HEADER_ALLOWANCE
        inflated = 0
        while chunk := handle.read(_HASH_CHUNK):
            while chunk and inflated <= allowed:
                inflated += len(inflater.decompress(chunk, _HASH_CHUNK))
                chunk = inflater.unconsumed_tail
            if inflated > allowed:
                raise DataError(
                    f"{path}: deflated DICOM inflates to over {allowed} bytes, more than the pixel budget of "
                    f"{limits.max_pixels} can need; not decoded"
                )


class _rewound:  # noqa: N801 - used like ``open``
    """An in-memory file as a context manager that leaves it rewound for the decoder that reads it next."""

    def __init__(self, buffer: BinaryIO) -> None:
        self.buffer = buffer

    def __enter__(self) -> BinaryIO:
        self.buffer.seek(0)
        return self.buffer

    def __exit__(self, *exc_info) -> None:
        self.buffer.seek(0)


def _windowed(values: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """The VOI LUT / window of the file applied to modality values, when it leaves a usable image.

    A window that saturates every pixel to one value (common on small CT files exported with a window for
    another tissue) would store an all-black image: then the modality values are used as they are
    (min-max scaled), which keeps the anatomy visible.
    """
    if "VOILUTSequence" not in ds and "WindowCenter" not in ds:
        return values
    try:
        windowed = apply_voi_lut(values, ds)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError):
        return values  # an unusable VOI/window falls back to min-max scaling
    if np.nanmin(windowed) == np.nanmax(windowed) and np.nanmin(values) != np.nanmax(values):
        return values
    return windowed


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Min-max scale any numeric array to uint8 in float32 math; a constant image becomes all zeros.

    Integer images (DICOM pixel data: 12-16 bits) go through a lookup table holding this very float formula for
    each of their levels: the same bytes as scaling every pixel, at a fraction of the passes.
    """
    values = np.asarray(values)
    if values.dtype.kind in "ui" and values.size > _LUT_MAX_LEVELS:
        low, high = int(values.min()), int(values.max())
        if high - low < _LUT_MAX_LEVELS:
            if values.dtype.kind == "u" and high < _LUT_MAX_LEVELS:  # indexed by the values: no shifted copy
                table = np.zeros(high + 1, dtype=np.uint8)
                table[low:] = _scale_to_uint8(np.arange(low, high + 1))
                return _look_up(table, values)
            return _look_up(_scale_to_uint8(np.arange(low, high + 1)), values, offset=low)
    values = np.asarray(values, dtype=np.float32)
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    if not high > low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = values - np.float32(low)
    scaled *= np.float32(255.0 / (high - low))
    np.nan_to_num(scaled, copy=False, nan=0.0)
    np.rint(scaled, out=scaled)
    return np.clip(scaled, 0, 255, out=scaled).astype(np.uint8)


def _look_up(table: np.ndarray, values: np.ndarray, offset: int = 0) -> np.ndarray:
    """``table[values - offset]``, a block of pixels at a time: numpy widens indices to 64 bits, and a block's
    widened copy stays in cache where a whole image's (4x its 16-bit bytes) does not (2048 px: 4.4 -> 2.6 ms)."""
    out = np.empty(values.shape, dtype=table.dtype)
    flat_values, flat_out = values.reshape(-1), out.reshape(-1)
    for start in range(0, flat_values.size, _LOOKUP_BLOCK):
        block = flat_values[start : start + _LOOKUP_BLOCK]
        if offset:
            block = np.subtract(block, offset, dtype=np.int64)  # 32-bit levels far from 0: no overflow
        np.take(table, block, out=flat_out[start : start + _LOOKUP_BLOCK])
    return out


def _first_line(exc: Exception) -> str:
    """The first line of an exception's message (error messages here stay one line)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _one_line(exc: Exception) -> str:
    """The whole message of an exception joined onto one line (decoder errors list every missing plugin)."""
    text = " ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    return text or type(exc).__name__


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    """Replicate one uint8 channel into an RGB image."""
    return Image.fromarray(np.ascontiguousarray(grey)).convert("RGB")
