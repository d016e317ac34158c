"""Image decoding: every format comes back as 8-bit RGB, and broken files fail with the path in the message."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retune.data.images import decode_image_bytes, file_content_hash, is_dicom, load_image
from retune.data.phantoms import dicom_dataset
from retune.errors import DataError


def _ramp(height: int = 8, width: int = 32, high: int = 4095) -> np.ndarray:
    """A left-to-right ramp from 0 to ``high`` as uint16."""
    return np.tile(np.linspace(0, high, width), (height, 1)).round().astype(np.uint16)


def _write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 16,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
) -> Path:
    """Write a minimal explicit-VR little-endian DICOM file holding uint16 ``pixels`` (2-D, or frames x H x W)."""
    elements = {}
    if window is not None:
        elements["WindowCenter"], elements["WindowWidth"] = window
    if rescale is not None:
        elements["RescaleSlope"], elements["RescaleIntercept"] = rescale
    ds = dicom_dataset(pixels, photometric, bits_stored, **elements)
    ds.save_as(path, enforce_file_format=True)
    return path


def _grey(img: Image.Image) -> np.ndarray:
    """First channel of an RGB image, after checking all three channels agree."""
    array = np.asarray(img)
    assert np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2])
    return array[..., 0].astype(int)


def test_png_8bit_greyscale_becomes_rgb_with_same_values(tmp_path):
    pixels = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 3).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "grey.png")
    img = load_image(tmp_path / "grey.png")
    assert img.mode == "RGB" and img.size == (8, 8)
    assert np.array_equal(_grey(img), pixels)


def test_png_rgb_is_kept(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "colour.png")
    assert np.array_equal(np.asarray(load_image(tmp_path / "colour.png")), pixels)


def test_png_16bit_is_min_max_scaled_not_clipped(tmp_path):
    pixels = _ramp(high=3000) + 1000  # 1000..4000: clipping to 8 bits would make it all white
    Image.fromarray(pixels).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    grey = _grey(load_image(tmp_path / "deep.png"))
    assert grey.min() == 0 and grey.max() == 255
    assert np.all(np.diff(grey[0]) >= 0) and len(np.unique(grey)) == pixels.shape[1]


def test_jpeg_decodes_to_rgb(tmp_path):
    pixels = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (16, 1))
    Image.fromarray(pixels).save(tmp_path / "x.jpg", quality=95)
    img = load_image(tmp_path / "x.jpg")
    assert img.mode == "RGB" and img.size == (64, 16)
    assert np.abs(_grey(img) - pixels.astype(int)).max() <= 8


def test_dicom_monochrome2_applies_rescale_then_window(tmp_path):
    # Stored 0..4095 with intercept -1000 -> -1000..3095; window centre 500, width 1000 -> [0, 1000].
    path = _write_dicom(tmp_path / "m2.dcm", _ramp(width=64), window=(500, 1000), rescale=(1, -1000))
    grey = _grey(load_image(path))
    stored = _ramp(width=64)[0].astype(float)
    values = stored - 1000
    assert np.all(grey[0][values < 0] == 0)
    assert np.all(grey[0][values > 1000] == 255)
    inside = (values > 100) & (values < 900)
    assert inside.any() and np.all((grey[0][inside] > 0) & (grey[0][inside] < 255))
    assert np.all(np.diff(grey[0]) >= 0)


def test_dicom_monochrome1_is_inverted(tmp_path):
    pixels = _ramp(width=64)
    plain = _grey(load_image(_write_dicom(tmp_path / "m2.dcm", pixels, window=(2000, 2000))))
    inverted = _grey(load_image(_write_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1", window=(2000, 2000))))
    assert np.array_equal(inverted, 255 - plain)
    assert inverted[0, 0] == 255 and inverted[0, -1] == 0


def test_dicom_12bit_without_window_is_min_max_scaled(tmp_path):
    pixels = _ramp(high=4095)
    grey = _grey(load_image(_write_dicom(tmp_path / "twelve.dcm", pixels, bits_stored=12)))
    expected = np.rint(pixels.astype(float) * 255 / 4095)
    assert np.array_equal(grey, expected)


def test_dicom_multi_frame_uses_first_frame(tmp_path):
    first = _ramp()
    frames = np.stack([first, first[:, ::-1]])
    path = _write_dicom(tmp_path / "frames.dcm", frames)
    grey = _grey(load_image(path))
    assert grey.shape == first.shape
    assert grey[0, 0] == 0 and grey[0, -1] == 255


def test_dicom_found_by_magic_without_suffix(tmp_path):
    path = _write_dicom(tmp_path / "scan.bin", _ramp())
    assert is_dicom(path)
    assert load_image(path).mode == "RGB"


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.png", b"", "empty file"),
        (
            "noise.png",
            bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)),
            "not a recognised image",
        ),
        ("noise.dcm", bytes(np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8)), "not a DICOM file"),
    ],
)
def test_broken_files_raise_data_error_naming_the_path(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=reason) as caught:
        load_image(path)
    assert str(path) in str(caught.value)


def test_truncated_png_raises_data_error(tmp_path):
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.png: cannot decode image"):
        load_image(tmp_path / "cut.png")


def test_truncated_dicom_pixel_data_raises_data_error(tmp_path):
    path = _write_dicom(tmp_path / "cut.dcm", _ramp(height=64, width=64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 2000])
    with pytest.raises(DataError, match=r"cut\.dcm: cannot decode DICOM"):
        load_image(path)


def test_missing_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="nothing.png: cannot read file"):
        load_image(tmp_path / "nothing.png")


def test_file_content_hash_matches_sha256_across_chunks(tmp_path):
    data = np.random.default_rng(4).integers(0, 256, 2_500_000, dtype=np.uint8).tobytes()  # > 2 chunks
    (tmp_path / "a.bin").write_bytes(data)
    (tmp_path / "b.bin").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert file_content_hash(tmp_path / "a.bin") == hashlib.sha256(data).hexdigest()
    assert file_content_hash(tmp_path / "a.bin") != file_content_hash(tmp_path / "b.bin")


def test_a_window_that_saturates_every_pixel_falls_back_to_the_modality_values(tmp_path):
    """A window far above the data (exported for another tissue) would store an all-black image; the ramp survives."""
    pixels = _ramp()
    grey = _grey(load_image(_write_dicom(tmp_path / "saturated.dcm", pixels, window=(60000, 10))))
    assert grey.min() == 0 and grey.max() == 255
    assert np.all(np.diff(grey[0]) >= 0)  # still the left-to-right ramp


def test_a_missing_decoder_is_recorded_with_its_whole_reason(tmp_path, monkeypatch):
    """pydicom lists every missing plugin on its own line; the one-line reason keeps all of them."""
    import pydicom

    def no_plugin(self):
        raise RuntimeError("Unable to decode the pixel data: all plugins are missing dependencies:\n"
                           "    gdcm - requires gdcm>=3.0.10\n    pylibjpeg - requires pylibjpeg>=2.0")

    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(no_plugin))
    with pytest.raises(DataError) as caught:
        load_image(_write_dicom(tmp_path / "compressed.dcm", _ramp()))
    message = str(caught.value)
    assert "\n" not in message and "gdcm>=3.0.10" in message and "pylibjpeg>=2.0" in message


def test_decode_image_bytes_matches_load_image(tmp_path):
    """An upload decoded in memory equals the same file decoded from disk (PNG and DICOM)."""
    png = tmp_path / "grey.png"
    Image.fromarray(_ramp(high=255).astype(np.uint8)).save(png)
    dicom = _write_dicom(tmp_path / "scan.dcm", _ramp(width=64), window=(2000, 4000))
    for path in (png, dicom):
        assert np.array_equal(_grey(decode_image_bytes(path.read_bytes(), path.name)), _grey(load_image(path)))


def test_decode_image_bytes_applies_the_same_limits(tmp_path):
    """A DICOM header declaring 20000 x 20000 pixels is refused in memory as on disk, before decoding."""
    import pydicom

    path = _write_dicom(tmp_path / "bomb.dcm", _ramp(width=64))
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 20000
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DataError, match=r"^bomb\.dcm: .*pixel budget"):
        decode_image_bytes(path.read_bytes(), "bomb.dcm")
