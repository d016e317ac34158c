"""CLIP: symmetric InfoNCE between the adaptor's pooled image and text embeddings (repeated texts are positives)."""

from __future__ import annotations

import math

import torch
from torch import nn

from retune.losses import clip_loss
from retune.methods.xattn_adaptor import CLIP_INIT_TEMPERATURE, MAX_LOGIT_SCALE
from retune.objectives.base import Objective, ObjectiveContext, ObjectiveOptions, PairBatch, register_objective


@register_objective("clip")
class ClipObjective(Objective):
    """InfoNCE with a learned temperature (initialised at CLIP's 0.07, logit scale capped at 100)."""

    def __init__(self, options: ObjectiveOptions, context: ObjectiveContext) -> None:
        super().__init__(options, context)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / CLIP_INIT_TEMPERATURE)))

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def contrast(self, image: torch.Tensor, text: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        """The loss on given L2-normalised embeddings (rows of ``positives`` are images, columns texts)."""
        return clip_loss(self.scale() * image @ text.T, positives)

    def forward(self, batch: PairBatch) -> torch.Tensor:
        return self.contrast(batch.full.image, batch.full.text, batch.positives)
