"""A toy RE-tune problem on synthetic vectors (no backbone): linearly separable classes, random prompt vectors, and
the method context and config the method and training tests build on."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from retune.config import AdaptorConfig, OptimConfig, ReTuneConfig
from retune.evaluation import fast_mean_auroc
from retune.methods.base import MethodContext, PromptBank, TaskData

CLASSES = ("Cardiomegaly", "Effusion", "Nodule")
IMAGE_DIM = 32
TEXT_DIM = 16


def prompt_bank(classes=CLASSES, text_dim=TEXT_DIM, seed=0) -> PromptBank:
    """Random positive/negative prompt vectors per class."""
    rng = np.random.default_rng(seed)
    bank = PromptBank()
    for name in classes:
        bank.positive[name] = rng.normal(size=text_dim).astype(np.float32)
        bank.negative[name] = rng.normal(size=text_dim).astype(np.float32)
    return bank


def context(image_dim=IMAGE_DIM, text_dim=TEXT_DIM, aligned=False, seed=0) -> MethodContext:
    return MethodContext(image_dim, text_dim, aligned, prompt_bank(text_dim=text_dim), fast_mean_auroc, seed)


def config(epochs=150, image="dense", text="dense", dropout=0.0, **optim) -> ReTuneConfig:
    return ReTuneConfig(
        adaptor=AdaptorConfig(image=image, text=text, dropout=dropout), optim=OptimConfig(epochs=epochs, **optim)
    )


def toy_data(n: int, image_dim=IMAGE_DIM, seed=0, direction_seed=42) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian vectors; class c is positive when x . w_c > 0 (linearly separable)."""
    directions = np.random.default_rng(direction_seed).normal(size=(image_dim, len(CLASSES)))
    x = np.random.default_rng(seed).normal(size=(n, image_dim)).astype(np.float32)
    return x, (x @ directions > 0).astype(np.float32)


def toy_task(n_train=300, n_val=80, image_dim=IMAGE_DIM) -> TaskData:
    train_x, train_y = toy_data(n_train, image_dim, seed=1)
    val_x, val_y = toy_data(n_val, image_dim, seed=2)
    return TaskData(CLASSES, train_x, train_y, val_x, val_y)


def mean_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean([roc_auc_score(labels[:, c], scores[:, c]) for c in range(labels.shape[1])]))
