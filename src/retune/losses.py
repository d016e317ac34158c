"""Losses on cached vectors: masked multi-label BCE, CLIP InfoNCE and SigLIP sigmoid loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE over the labelled entries only: NaN labels (uncertain / ignored) contribute nothing."""
    valid = ~torch.isnan(labels)
    if not valid.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[valid], labels[valid])


def info_nce(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss: row i of ``image`` matches row i of ``text`` (both L2-normalised)."""
    logits = logit_scale * image @ text.T
    targets = torch.arange(len(image), device=image.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def siglip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor) -> torch.Tensor:
    """SigLIP pairwise sigmoid loss: +1 on the diagonal, -1 elsewhere, averaged per image."""
    logits = logit_scale * image @ text.T + logit_bias
    signs = 2 * torch.eye(len(image), device=image.device) - 1
    return -F.logsigmoid(signs * logits).sum() / len(image)


def distillation_bce(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Multi-label knowledge distillation: BCE against the teacher's softened sigmoid outputs (LwF)."""
    targets = torch.sigmoid(teacher_logits / temperature)
    return F.binary_cross_entropy_with_logits(logits / temperature, targets)
