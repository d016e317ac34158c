"""Shared helpers: machine description, timing, JSON results and the ratio table.

Every benchmark measures its ratios inside one run (the two arms interleaved, medians of
repeats), because the machines this runs on are shared and absolute timings drift. Targets are
reported, never asserted.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = (ROOT.parent / "shared" / "data").resolve()
NIH_CSV = DATA / "nih-cxr14" / "labels.csv"
NIH_FINDINGS = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
]


@dataclass
class Context:
    """What every benchmark gets from the CLI."""

    quick: bool
    workdir: Path
    results_dir: Path
    threads: int | None = None
    scenario_results: list[Path] = field(default_factory=list)

    def log(self, message: str) -> None:
        print(f"  [{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine() -> dict:
    """CPU, cores, RAM, load, Python/torch versions and threads, GPU if any, timestamp."""
    import numpy
    import torch

    from retune.devices import usable_cores

    affinity = usable_cores()
    gpu = None
    if torch.cuda.is_available():
        gpu = {
            "name": torch.cuda.get_device_name(0),
            "bf16": torch.cuda.is_bf16_supported(),
            "cuda": torch.version.cuda,
        }
    try:
        from importlib.metadata import version

        retune_version = version("retune")
    except Exception:  # noqa: BLE001 - informational only
        retune_version = None
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "ram_bytes": _ram_bytes(),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "numpy": numpy.__version__,
        "retune": retune_version,
        "gpu": gpu,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call, wall clock."""
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def interleaved(arms: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Run the arms in turn (A B C A B C ...) ``repeats`` times; seconds per arm per repeat."""
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(repeats):
        for name, arm in arms.items():
            seconds[name].append(timed(arm)[0])
    return seconds


def target(name: str, value: float | None, goal: str, met: bool | None, note: str = "") -> dict:
    """A target as reported (never asserted): what was measured, the goal, and whether it was met."""
    return {"name": name, "value": value, "goal": goal, "met": met, "note": note}


def write_result(ctx: Context, name: str, payload: dict) -> Path:
    """benchmarks/results/<name>.json with ``ratios`` on top, then everything else and the machine."""
    ctx.results_dir.mkdir(parents=True, exist_ok=True)
    ordered = {"benchmark": name, "mode": "quick" if ctx.quick else "full", "ratios": payload.get("ratios", {})}
    ordered.update({key: value for key, value in payload.items() if key != "ratios"})
    ordered["machine"] = machine()
    path = ctx.results_dir / f"{name}.json"
    temp = path.with_suffix(".json.tmp")
    temp.write_text(json.dumps(ordered, indent=2, default=_json_default) + "\n")
    temp.replace(path)
    return path


def _json_default(value: Any) -> Any:
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:
        pass
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.{digits}g}"
    return str(value)


def print_table(header: list[str], rows: list[list[Any]], title: str | None = None) -> str:
    """A plain fixed-width table (also returned as text)."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def rss_bytes() -> int | None:
    """Current resident set size of this process (Linux /proc)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_bytes() -> int:
    """Peak RSS of this process so far.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this process's own address
    space. ``getrusage().ru_maxrss`` is not used there because the kernel carries it across
    ``exec``: a subprocess started from a large parent would report the parent's size.
    Elsewhere: ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
