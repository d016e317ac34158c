"""SigLIP: a sigmoid loss on every (image, text) pair of the batch, with a learned scale and bias."""

from __future__ import annotations

import torch
from torch import nn

from retune.losses import sigmoid_pair_loss
from retune.methods.xattn_adaptor import MAX_LOGIT_SCALE, SIGLIP_INIT_BIAS, SIGLIP_INIT_SCALE
from retune.objectives.base import Objective, ObjectiveContext, ObjectiveOptions, PairBatch, register_objective


@register_objective("siglip")
class SiglipObjective(Objective):
    """Zhai et al. 2023: log-scale initialised at log 10, bias at -10 (the few positives start near probability 0)."""

    def __init__(self, options: ObjectiveOptions, context: ObjectiveContext) -> None:
        super().__init__(options, context)
        self.logit_scale = nn.Parameter(torch.tensor(SIGLIP_INIT_SCALE))
        self.logit_bias = nn.Parameter(torch.tensor(SIGLIP_INIT_BIAS))

    def forward(self, batch: PairBatch) -> torch.Tensor:
        scale = self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        return sigmoid_pair_loss(scale * batch.full.image @ batch.full.text.T + self.logit_bias, batch.positives)
