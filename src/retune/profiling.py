"""Memory and timing probes for experiments: peak memory of a block of work, and a CUDA-aware stopwatch."""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Peak memory of the enclosed work in MB: CUDA max_memory_allocated, or on CPU the sampled RSS high-water mark."""
    report: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield report
        torch.cuda.synchronize(device)
        report["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        report["peak_memory_above_start_mb"] = round((torch.cuda.max_memory_allocated(device) - start) / 2**20, 1)
        report["peak_memory_source"] = (
            "CUDA: torch.cuda.max_memory_allocated during training + evaluation (peak_memory_above_start_mb: minus "
            "what was allocated at start)"
        )
        return
    start, peak, done = _rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            done.wait(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield report
    finally:
        done.set()
        sampler.join()
        peak[0] = max(peak[0], _rss_bytes())
        report["peak_memory_mb"] = round(peak[0] / 2**20, 1)
        report["peak_memory_above_start_mb"] = round(max(peak[0] - start, 0) / 2**20, 1)
        report["peak_memory_source"] = (
            "CPU: process RSS sampled every 5 ms (/proc/self/statm) during training + evaluation; peak_memory_mb is "
            "the whole "
            "process, peak_memory_above_start_mb the growth (0 when memory freed by an earlier run in the process is "
            "reused)"
        )


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * resource.getpagesize()
    except OSError:  # not Linux: the lifetime high-water mark (KB on Linux/BSD, bytes on macOS)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed() -> Callable[[], float]:
    """Start a stopwatch; calling the result gives seconds since (CUDA work included)."""
    started = time.perf_counter()

    def elapsed() -> float:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return time.perf_counter() - started

    return elapsed
