"""Run kinds: every run directory's ``config.json`` records the experiment that made it (``kind``), and
evaluate / predict pick the loader registered for that kind. Run directories from before the field are
recognised here, and only here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from retune.backbones.base import Backbone
from retune.data.table import ImageTable
from retune.errors import unknown_name

Scorer = Callable[[ImageTable], tuple[dict[str, np.ndarray], np.ndarray, pd.DataFrame]]


@dataclass
class SavedRun:
    """A run ready to score images: its facts, the experiment config it ran with, backbone, class order, main
    method and a scorer for tables."""

    facts: dict
    config: dict
    backbone: Backbone
    classes: list[str]
    main: str
    score: Scorer  # table -> (probabilities per method, rows kept, unreadable images)
    path: Path | None = None  # the run directory (set by ``inference.open_run``; the leakage guard reads it)


class RunLoader(Protocol):
    """Rebuild a run directory of one kind; ``checkpoint`` is its already read ``load_checkpoint`` result;
    ``cache``: whether new images' embeddings may be added to the store (else they stay in memory)."""

    def __call__(self, run_dir: Path, checkpoint: tuple[dict, dict], store_dir: str | Path | None,
                 device: str | None, show_progress: bool, cache: bool = False) -> SavedRun: ...


RUN_KINDS: dict[str, RunLoader] = {}


def register_run_kind(kind: str) -> Callable[[RunLoader], RunLoader]:
    """Register the loader of run directories whose config.json says ``"kind": kind``."""

    def decorator(loader: RunLoader) -> RunLoader:
        RUN_KINDS[kind] = loader
        return loader

    return decorator


def run_kind(facts: dict) -> str:
    """The kind a run's config.json records; older runs (no ``kind``) are told apart by the block each wrote."""
    if "kind" in facts:
        return facts["kind"]
    if "tuning" in facts:
        return "peft"
    if "adaptor_config" in facts:
        return "adaptor"
    return "retune-train"


def loader_for(facts: dict) -> RunLoader:
    """The registered loader for a run's kind, or ConfigError listing the known kinds."""
    kind = run_kind(facts)
    if kind not in RUN_KINDS:
        raise unknown_name("run kind", kind, list(RUN_KINDS))
    return RUN_KINDS[kind]
