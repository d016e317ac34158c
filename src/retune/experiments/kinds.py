"""Run kinds: every run directory's ``config.json`` records the experiment that made it (``kind``, named in
``retune.experiments.run_folder``, which also recognises folders from before the field), and evaluate / predict
pick the loader registered here for that kind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from retune.backbones.base import Backbone
from retune.data.table import ImageTable
from retune.errors import ConfigError, unknown_name
from retune.experiments.run_folder import run_kind
from retune.methods.retune import ReTuneModel
from retune.store.embed import encode_in_chunks

Scorer = Callable[[ImageTable], tuple[dict[str, np.ndarray], np.ndarray, pd.DataFrame]]


@dataclass
class PixelScores:
    """A run's main method on a preprocessed batch: probabilities and, for RE-tune heads, the prompt similarities."""

    probabilities: np.ndarray  # images x classes
    positive: np.ndarray | None = None  # cosine similarity to the class's positive prompt (images x classes)
    negative: np.ndarray | None = None


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
    head: Any = None  # the main method's scorer of pooled image features (a ReTuneModel or a Method), when it has one
    path: Path | None = None  # the run directory (set by ``inference.open_run``; the leakage guard reads it)

    def score_pixels(self, pixels: torch.Tensor) -> PixelScores:
        """The main method's scores for preprocessed images (N x C x H x W) in memory; the store is not involved."""
        if self.head is None:
            raise ConfigError(f"run method '{self.main}' cannot score images held in memory")
        features = encode_in_chunks(self.backbone, pixels.to(self.backbone.device), tokens=False).pooled.float()
        if not isinstance(self.head, ReTuneModel):
            return PixelScores(self.head.predict(features.cpu().numpy()))
        with torch.no_grad():
            positive, negative = self.head.similarities(features)
            probabilities = torch.sigmoid(self.head(features))
        return PixelScores(probabilities.cpu().numpy(), positive.cpu().numpy(), negative.cpu().numpy())


class RunLoader(Protocol):
    """Rebuild a run directory of one kind; ``checkpoint`` is its already read ``load_checkpoint`` result;
    ``cache``: whether new images' embeddings may be added to the store (else they stay in memory)."""

    def __call__(
        self,
        run_dir: Path,
        checkpoint: tuple[dict, dict],
        store_dir: str | Path | None,
        device: str | None,
        show_progress: bool,
        cache: bool = False,
    ) -> SavedRun: ...


RUN_KINDS: dict[str, RunLoader] = {}


def register_run_kind(kind: str) -> Callable[[RunLoader], RunLoader]:
    """Register the loader of run directories whose config.json says ``"kind": kind``."""

    def decorator(loader: RunLoader) -> RunLoader:
        RUN_KINDS[kind] = loader
        return loader

    return decorator


def loader_for(facts: dict) -> RunLoader:
    """The registered loader for a run's kind, or ConfigError listing the known kinds."""
    kind = run_kind(facts)
    if kind not in RUN_KINDS:
        raise unknown_name("run kind", kind, list(RUN_KINDS))
    return RUN_KINDS[kind]
