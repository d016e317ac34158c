"""Losses on cached vectors: masked multi-label BCE, contrastive losses (CLIP InfoNCE, SigLIP) with several
positives per row, RE-tune's prompt objectives built from them, and LwF distillation."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import get_args

import torch
import torch.nn.functional as F
from torch import nn

from retune.config import PromptObjective

PROMPT_OBJECTIVES: tuple[str, ...] = get_args(PromptObjective)
Regulariser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (images, logits) -> extra loss
EXCLUDED_LOGIT = -1e4  # finite stand-in for -inf: exp() is 0, and rows with nothing valid stay NaN-free


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE over the labelled entries only: NaN labels (uncertain / ignored) contribute nothing.

    Written with masks rather than boolean indexing, so it never waits on the GPU (no data-dependent shapes)
    and runs under ``vmap`` on single rows (EWC's per-row gradients).
    """
    valid = ~torch.isnan(labels)
    losses = F.binary_cross_entropy_with_logits(logits, torch.where(valid, labels, 0.0), reduction="none")
    return (losses * valid).sum() / valid.sum().clamp(min=1)


def multi_positive_info_nce(
    logits: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """One direction of CLIP's InfoNCE: each row's softmax over its valid columns against a uniform target on its
    positives.

    With one positive per row (the diagonal) this is exactly CLIP's cross-entropy; repeated texts or shared labels
    make several positives. Rows without a positive are skipped.
    """
    if valid is not None:
        logits = logits.masked_fill(~valid, EXCLUDED_LOGIT)
        positive = positive & valid
    counts = positive.sum(1)
    rows = counts > 0
    log_probs = logits.float().log_softmax(1).masked_fill(~positive, 0.0)
    per_row = -log_probs.sum(1) / counts.clamp(min=1)  # masks, not boolean indexing: no GPU host sync
    return (per_row * rows).sum() / rows.sum().clamp(min=1)


def clip_loss(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP InfoNCE on an image x text logit matrix; ``positive[i, j]`` marks matching pairs."""
    return (multi_positive_info_nce(logits, positive) + multi_positive_info_nce(logits.T, positive.T)) / 2


def sigmoid_pair_loss(logits: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """SigLIP: -log sigmoid(+logit) for matching pairs and -log sigmoid(-logit) otherwise, summed per row and
    averaged over the rows that have a valid pair (so rows with nothing labelled change nothing)."""
    terms = F.logsigmoid((2 * positive.float() - 1) * logits.float())
    if valid is None:
        return -terms.sum() / len(logits)
    return -(terms * valid).sum() / valid.any(1).sum().clamp(min=1)


def prompt_objective(
    objective: str,
    positive_sim: torch.Tensor,
    negative_sim: torch.Tensor,
    labels: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
) -> torch.Tensor:
    """RE-tune's training loss on (image x class) cosine similarities to each class's positive and negative prompt.

    ``bce`` (the paper): masked BCE on scale * (s+ - s-), i.e. a 2-way softmax over the class's two prompts.
    ``clip``: symmetric InfoNCE on label-defined pairs (an image matches the positive prompt of each class it has and
    the negative prompt of each class it lacks): image -> prompt is that 2-way softmax, prompt -> image a softmax
    over the batch's images with every matching image a positive, so images are also ranked against each other.
    ``siglip``: sigmoid loss on every labelled (image, prompt) pair, scale * s + bias, with a learnable bias.
    NaN labels take part in no pair.
    """
    if objective not in PROMPT_OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; valid: {', '.join(PROMPT_OBJECTIVES)}")
    if objective == "bce":
        return masked_bce(scale * (positive_sim - negative_sim), labels)
    valid = ~torch.isnan(labels)
    present = valid & (labels > 0.5)
    logits = scale * torch.cat([positive_sim, negative_sim], 1)
    matches = torch.cat([present, valid & ~present], 1)
    labelled = torch.cat([valid, valid], 1)
    if objective == "siglip":
        return sigmoid_pair_loss(logits + bias, matches, labelled)
    two_way = masked_bce(scale * (positive_sim - negative_sim), labels)
    return (two_way + multi_positive_info_nce(logits.T, matches.T, labelled.T)) / 2


def distillation_bce(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Multi-label knowledge distillation: BCE against the teacher's softened sigmoid outputs (LwF)."""
    targets = torch.sigmoid(teacher_logits / temperature)
    return F.binary_cross_entropy_with_logits(logits / temperature, targets)


def logit_distillation(
    model: nn.Module, old_columns: torch.Tensor, weight: float, temperature: float
) -> Regulariser | None:
    """LwF's regulariser: freeze a copy of ``model`` now; the term distils its ``old_columns`` logits on each batch's
    images into the model being trained (None when there is nothing to protect)."""
    if weight <= 0 or not len(old_columns):
        return None
    teacher = copy.deepcopy(model).eval()

    def distill(images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(images)[:, old_columns]
        return weight * distillation_bce(logits[:, old_columns], teacher_logits, temperature)

    return distill
