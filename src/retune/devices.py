"""Device choice and autocast in one place, so every stage runs on CUDA when it is there."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys

import torch

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
HEAP_BLOCKS_UP_TO = 32 << 20  # glibc's largest allowed mmap threshold
KEEP_FREED_UP_TO = 256 << 20  # per arena: a few batches' activations, not a GiB per decoding thread


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform tells it, else every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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


@functools.cache
def keep_freed_memory_for_reuse() -> bool:
    """Have glibc's malloc serve blocks up to 32 MiB from its heap and keep up to 256 MiB freed there for reuse.

    A CPU forward pass allocates and frees its activations on every call; with glibc's defaults, blocks above its
    adaptive mmap threshold are mapped and unmapped each time, so every call page-faults them in again. Measured
    on 2 cores (EfficientNet-Lite0, batches of 4), that halved the encoder's speed: 100 vs 200 images/s. This is
    what PyTorch's CPU tuning guide gets from jemalloc or tcmalloc, set in this process once (children forked
    later inherit it; spawned ones must call this themselves). The price: up to 256 MiB per malloc arena freed
    after a peak stays in the process for reuse instead of going back to the system. False, changing nothing,
    where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: their allocators have no such thresholds
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, HEAP_BLOCKS_UP_TO)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_UP_TO)
    )
