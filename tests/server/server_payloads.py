"""Request bodies for the server tests: PNG and DICOM bytes made in memory, good and hostile."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from retune.data.phantoms import dicom_dataset


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def dicom_bytes(pixels: np.ndarray | None, patient_name: str = "Doe^Jane") -> bytes:
    """A minimal DICOM Part 10 file in memory with a patient name; ``pixels=None`` leaves out the pixel data."""
    buffer = io.BytesIO()
    dicom_dataset(pixels, PatientName=patient_name, PatientID="PID-123456").save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def huge_png_header(side: int = 20000) -> bytes:
    """A PNG that declares side x side pixels (a decompression bomb) but holds one tiny IDAT chunk."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )
