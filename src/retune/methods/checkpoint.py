"""Checkpoints are ``checkpoint.safetensors`` (tensors) + ``config.json`` (facts); nothing is unpickled.

Tensors are class-level (adaptor weights, prompt embeddings, per-class heads): a checkpoint
holds no per-image data, which keeps it exemplar-free and shareable. ``config.json`` records the
SHA-256 of the tensors file; loading verifies it, validates ``config.json`` with the pydantic models
below and refuses non-finite tensors, each refusal one line naming the file and the problem.
"""

from __future__ import annotations

import hashlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.numpy import load_file, save_file

from retune.errors import StoreError
from retune.io_utils import MAX_TENSOR_BYTES, atomic_path, read_json, regular_file_size, write_json_atomic

CHECKPOINT = "checkpoint.safetensors"
CONFIG = "config.json"
_HASH_CHUNK = 1 << 20


class CheckpointFacts(BaseModel):
    """What every ``config.json`` beside a checkpoint holds (more keys are allowed: they are the run's facts)."""

    model_config = ConfigDict(extra="allow")

    methods: dict[str, dict] = Field(description="Per saved method: its JSON facts (classes, temperature, ...).")
    versions: dict[str, str] = Field(default_factory=dict)
    weights_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the tensors file.")


class BackboneFacts(BaseModel):
    """The backbone a run was trained on, as ``Backbone.describe()`` records it."""

    model_config = ConfigDict(extra="allow")

    spec: str
    fingerprint: str


class RunFacts(CheckpointFacts):
    """``config.json`` of a run directory made by ``retune train`` or ``retune peft run``."""

    backbone: BackboneFacts
    classes: list[str] = Field(min_length=1)
    train_config: dict


FactsT = TypeVar("FactsT", bound=CheckpointFacts)


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape results, recorded in every config.json."""
    found = {}
    for name in ("retune", "torch", "timm", "transformers", "open_clip_torch", "scikit-learn", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(
    directory: str | Path, methods: dict[str, tuple[dict[str, np.ndarray], dict]], facts: dict
) -> None:
    """Write every method's tensors (prefixed ``method/``) and the JSON facts with the tensors' SHA-256, atomically."""
    directory = Path(directory)
    tensors = {
        f"{name}/{key}": np.ascontiguousarray(value)
        for name, (state, _) in methods.items()
        for key, value in state.items()
    }
    with atomic_path(directory / CHECKPOINT) as temp:
        save_file(tensors, str(temp))
        digest = file_sha256(temp)
    payload = {
        **facts,
        "methods": {name: method_facts for name, (_, method_facts) in methods.items()},
        "versions": package_versions(),
        "weights_sha256": digest,
    }
    write_json_atomic(directory / CONFIG, payload)


def load_checkpoint(
    directory: str | Path, facts_model: type[FactsT] = CheckpointFacts, verify: bool = True
) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Read a run directory's checkpoint: ({method: tensors}, facts). Refuses anything but safetensors/JSON, a
    ``config.json`` that ``facts_model`` rejects, tensors whose SHA-256 differs from the recorded one, a
    ``config.json`` that records no SHA-256 (unless ``verify`` is False: the caller says so loudly), and
    non-finite tensors."""
    directory = Path(directory)
    checkpoint, config = directory / CHECKPOINT, directory / CONFIG
    if not checkpoint.exists() or not config.exists():
        pickles = sorted(p.name for p in directory.glob("*") if p.suffix in {".pt", ".pth", ".pkl", ".bin", ".ckpt"})
        hint = f" (found {', '.join(pickles)}: pickled files are never loaded)" if pickles else ""
        raise StoreError(f"{directory}: not a retune run directory; expected {CHECKPOINT} and {CONFIG}{hint}")
    facts = _read_facts(config, facts_model)
    regular_file_size(checkpoint, MAX_TENSOR_BYTES, "checkpoint file")
    recorded = facts.get("weights_sha256")
    if recorded is None and verify:
        raise StoreError(
            f"{config}: records no weights_sha256, so {checkpoint} cannot be verified; refusing to load it "
            "(--no-verify loads it unverified)"
        )
    if recorded is not None and file_sha256(checkpoint) != recorded:
        raise StoreError(
            f"{checkpoint}: SHA-256 differs from the one recorded in {CONFIG} (the file is corrupt or was altered); "
            "refusing to load it"
        )
    try:
        flat = load_file(str(checkpoint))
    except Exception as error:  # safetensors raises its own error types for a corrupt header
        raise StoreError(f"{checkpoint}: unreadable checkpoint ({_one_line(error)})") from error
    tensors: dict[str, dict[str, np.ndarray]] = {}
    for key, value in flat.items():
        if np.issubdtype(value.dtype, np.inexact) and not np.isfinite(value).all():
            raise StoreError(f"{checkpoint}: tensor '{key}' holds NaN or infinite values; refusing to load it")
        method, _, name = key.partition("/")
        tensors.setdefault(method, {})[name] = value
    unknown = sorted(set(tensors) - set(facts["methods"]))
    if unknown:
        raise StoreError(f"{checkpoint}: tensors of method '{unknown[0]}' that {CONFIG} does not list")
    return tensors, facts


def _read_facts(config: Path, facts_model: type[CheckpointFacts]) -> dict:
    """``config.json`` parsed and validated by ``facts_model``; problems are one-line StoreErrors naming the field."""
    return check_facts(config, read_json(config), facts_model)


def check_facts(config: Path, facts: object, facts_model: type[CheckpointFacts]) -> dict:
    """``facts`` (read from ``config``) when ``facts_model`` accepts them, else one StoreError line naming a field."""
    try:
        facts_model.model_validate(facts)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise StoreError(f"{config}: field '{field}': {first['msg']}") from None
    return facts


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__
