"""What every method receives and provides, so scenarios and evaluation treat them alike.

A method learns task after task (a plain training run is one task with every class). During
``learn`` it sees only that task's rows: the exemplar-free rule is in the signature, since no
method gets a handle on earlier tasks' data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch


@dataclass(frozen=True)
class TaskData:
    """One task's cached vectors: ``train_y``/``val_y`` columns follow ``classes`` (NaN = masked)."""

    classes: tuple[str, ...]
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray | None = None
    val_y: np.ndarray | None = None


@dataclass
class PromptBank:
    """Averaged positive/negative prompt embeddings per class (text-tower space, not adapted)."""

    positive: dict[str, np.ndarray] = field(default_factory=dict)
    negative: dict[str, np.ndarray] = field(default_factory=dict)

    def matrices(self, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Stacked (classes x text_dim) positive and negative matrices."""
        return np.stack([self.positive[c] for c in classes]), np.stack([self.negative[c] for c in classes])


@dataclass(frozen=True)
class MethodContext:
    """Facts about the frozen backbone and the prompts that a method may use."""

    image_dim: int
    text_dim: int
    aligned: bool
    prompts: PromptBank
    val_score: Callable[[np.ndarray, np.ndarray], float | None]  # (scores, labels) -> mean AUROC, for early stopping
    seed: int = 0
    on_epoch: Callable[[int, float, float | None], None] | None = (
        None  # (epoch, train loss, val score): progress display
    )


class Method(ABC):
    """A classifier on frozen image embeddings that can learn classes task by task."""

    name: ClassVar[str]
    description: ClassVar[str]
    requires_aligned: ClassVar[bool] = False  # needs image and text in one space (zero-shot)
    exemplar_free: ClassVar[bool] = True  # False only for the joint upper bound
    # scenario kinds it can run; the runner refuses the others before training
    scenario_kinds: ClassVar[frozenset[str]] = frozenset({"class", "label", "data", "site"})

    def __init__(self, context: MethodContext) -> None:
        torch.manual_seed(context.seed)  # weight initialisation depends on the seed only, not on earlier work
        self.context = context
        self.classes: list[str] = []

    def add_classes(self, classes: tuple[str, ...] | list[str]) -> list[str]:
        """Append unseen classes to the output order; returns the new ones."""
        new = [c for c in classes if c not in self.classes]
        self.classes.extend(new)
        return new

    @abstractmethod
    def learn(self, task: TaskData) -> dict:
        """Train on one task's rows; returns a small dict of training facts (epochs, best val)."""

    @abstractmethod
    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (rows x ``self.classes``)."""

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Tensors (for safetensors) and JSON facts needed to rebuild the method; no per-image data."""
        raise NotImplementedError(f"method {self.name} cannot be saved")

    def load_state(self, tensors: dict[str, np.ndarray], facts: dict) -> None:
        """Inverse of ``state``."""
        raise NotImplementedError(f"method {self.name} cannot be loaded")
