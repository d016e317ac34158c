"""Device choice and autocast in one place, so every stage runs on CUDA when it is there."""

from __future__ import annotations

import contextlib

import torch


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` if given, else CUDA when available, else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (when supported, else fp16); a no-op on CPU, where fp32 is fastest here."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively: CUDA with bf16, or a CPU with AVX-512 BF16 / AMX that oneDNN uses."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def training_autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for training steps on cached vectors: ``bf16`` always, ``auto`` where ``bf16_supported``,
    ``fp32`` never. Weights, gradients and optimiser state stay fp32 (autocast only casts inside the region)."""
    if precision == "bf16" or (precision == "auto" and bf16_supported(device)):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
