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
