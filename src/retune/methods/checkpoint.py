"""Checkpoints are ``checkpoint.safetensors`` (tensors) + ``config.json`` (facts); nothing is unpickled.

Tensors are class-level (adaptor weights, prompt embeddings, per-class heads): a checkpoint
holds no per-image data, which keeps it exemplar-free and shareable.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from retune.errors import StoreError
from retune.io_utils import atomic_path, write_json_atomic

CHECKPOINT = "checkpoint.safetensors"
CONFIG = "config.json"


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape results, recorded in every config.json."""
    found = {}
    for name in ("retune", "torch", "timm", "transformers", "open_clip_torch", "scikit-learn", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def save_checkpoint(
    directory: str | Path, methods: dict[str, tuple[dict[str, np.ndarray], dict]], facts: dict
) -> None:
    """Write every method's tensors (prefixed ``method/``) and the JSON facts, atomically."""
    directory = Path(directory)
    tensors = {
        f"{name}/{key}": np.ascontiguousarray(value)
        for name, (state, _) in methods.items()
        for key, value in state.items()
    }
    with atomic_path(directory / CHECKPOINT) as temp:
        save_file(tensors, str(temp))
    payload = {
        **facts,
        "methods": {name: method_facts for name, (_, method_facts) in methods.items()},
        "versions": package_versions(),
    }
    write_json_atomic(directory / CONFIG, payload)


def load_checkpoint(directory: str | Path) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Read a run directory's checkpoint: ({method: tensors}, facts). Refuses anything but safetensors/JSON."""
    directory = Path(directory)
    checkpoint, config = directory / CHECKPOINT, directory / CONFIG
    if not checkpoint.exists() or not config.exists():
        pickles = sorted(p.name for p in directory.glob("*") if p.suffix in {".pt", ".pth", ".pkl", ".bin", ".ckpt"})
        hint = f" (found {', '.join(pickles)}: pickled files are never loaded)" if pickles else ""
        raise StoreError(f"{directory}: not a retune run directory; expected {CHECKPOINT} and {CONFIG}{hint}")
    try:
        flat = load_file(str(checkpoint))
        facts = json.loads(config.read_text())
    except Exception as error:  # safetensors raises its own error types for a corrupt header
        raise StoreError(f"{directory}: unreadable checkpoint ({error})") from error
    tensors: dict[str, dict[str, np.ndarray]] = {}
    for key, value in flat.items():
        method, _, name = key.partition("/")
        tensors.setdefault(method, {})[name] = value
    return tensors, facts
