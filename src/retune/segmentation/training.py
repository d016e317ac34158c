"""Train a segmentation model on cached inputs with Dice + BCE (MONAI's Dice) through the one training loop, ignore
pixels and structures not annotated on an image left out; keep the epoch with the best validation Dice."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retune.config import OptimConfig
from retune.training.loop import fit as train_loop

IGNORE = -1  # target value of ignore pixels and of structures not annotated on an image
Inputs = Callable[[np.ndarray], Any]  # rows -> what the model takes (cached maps, or pixels for the baseline)



@functools.cache
def _monai_dice() -> nn.Module:
    """MONAI's soft Dice loss per structure, intersection and sums over the whole batch (MONAI imports slowly: only
    when a model trains)."""
    from monai.losses import DiceLoss

    return DiceLoss(batch=True, reduction="none")


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over structures annotated in the batch of MONAI's soft Dice loss, plus BCE over valid pixels.

    ``target`` (N x K x H x W) holds 1, 0 or ``IGNORE``; ignore pixels count in neither term. Dice sums over the batch,
    so an image whose annotated mask is empty adds its false positives without a 0/0 term of its own.
    """
    valid = (target != IGNORE).float()
    truth = target.clamp(min=0).float()
    dice = _monai_dice()(torch.sigmoid(logits) * valid, truth * valid).flatten()
    annotated = valid.flatten(2).sum(dim=(0, 2)) > 0
    bce = F.binary_cross_entropy_with_logits(logits, truth, weight=valid, reduction="sum") / valid.sum().clamp(min=1)
    return (dice[annotated].mean() if annotated.any() else logits.sum() * 0) + bce


def upsampled_logits(model: nn.Module, batch: Any, size: int) -> torch.Tensor:
    """The model's logits (any stride) resized to ``size`` x ``size``."""
    return F.interpolate(model(batch), size=(size, size), mode="bilinear", align_corners=False)


@torch.no_grad()
def predict_probabilities(model: nn.Module, inputs: Inputs, rows: np.ndarray, size: int, batch_size: int = 16
                          ) -> torch.Tensor:
    """Sigmoid probabilities (rows x K x size x size, float16 to keep memory small) for ``rows``."""
    model.eval()
    chunks = [
        torch.sigmoid(upsampled_logits(model, inputs(rows[start : start + batch_size]), size)).half()
        for start in range(0, len(rows), batch_size)
    ]
    return torch.cat(chunks) if chunks else torch.zeros(0)


def mean_dice(probabilities: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> float | None:
    """Mean over structures of the mean Dice on images where the structure is present (ignore pixels left out);
    None when no structure is present anywhere. Used to pick the epoch, not to report."""
    valid = target != IGNORE
    predicted = (probabilities.float() >= threshold) & valid
    truth = (target == 1) & valid
    intersection = (predicted & truth).flatten(2).sum(-1).float()
    sizes = predicted.flatten(2).sum(-1) + truth.flatten(2).sum(-1)
    present = truth.flatten(2).any(-1)
    per_structure = [
        float((2 * intersection[:, k][present[:, k]] / sizes[:, k][present[:, k]]).mean())
        for k in range(target.shape[1]) if present[:, k].any()
    ]
    return float(np.mean(per_structure)) if per_structure else None


def fit(
    model: nn.Module,
    inputs: Inputs,
    targets: torch.Tensor,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    optim: OptimConfig,
    seed: int,
    on_epoch: Callable[[int, float, float | None], None] | None = None,
) -> dict:
    """Train ``model`` on ``train_rows`` with the one training loop (``retune.training.loop.fit``: AdamW, best
    validation Dice kept; the last epoch without validation rows). Returns JSON-ready facts with the per-epoch
    history and the seconds per epoch."""
    size = targets.shape[-1]

    def loss(rows: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        batch = rows.numpy()
        return dice_bce_loss(upsampled_logits(model, inputs(train_rows[batch]), size),
                             targets[train_rows[batch]].float())

    def val_score() -> float | None:
        return mean_dice(predict_probabilities(model, inputs, val_rows, size), targets[val_rows])

    started = time.perf_counter()
    positions = torch.arange(len(train_rows))  # the loop shuffles positions; ``loss`` gathers their rows itself
    result = train_loop(model, model.parameters(), loss, positions, positions, optim,
                        val_score if len(val_rows) else None, seed, on_epoch=on_epoch)
    seconds = time.perf_counter() - started
    return {**result.facts(), "seconds": round(seconds, 2), "seconds_per_epoch": round(seconds / result.epochs_run, 3)}
