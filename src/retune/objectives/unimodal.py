"""Unimodal additions (SLIP, Mu et al. 2022; SimCSE; masked modelling): losses inside one modality.

- image-image: InfoNCE between two random maskings of the same image's tokens (SimCLR-style, own MLP head);
- text-text: InfoNCE between two dropout passes of the same text (SimCSE), on the batch's distinct paired texts
  plus any text-only texts (Open-i reports);
- masked text-token prediction: a share of the real text tokens is replaced by a learned mask vector and the
  text tower, through a linear head, predicts each hidden token's cached vector (cosine loss). The store caches
  the text tower's last hidden states, not token ids, so the target is the frozen token feature (as in masked
  feature prediction), not a vocabulary entry; neighbouring contextual states carry part of the answer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from retune.losses import clip_loss
from retune.objectives.base import (
    Objective,
    ObjectiveContext,
    ObjectiveOptions,
    PairBatch,
    drop_tokens,
    register_objective,
)


class UnimodalOptions(ObjectiveOptions):
    image_weight: float = Field(1.0, ge=0.0, description="Weight of the image-image contrast.")
    text_weight: float = Field(1.0, ge=0.0, description="Weight of the text-text contrast.")
    mlm_weight: float = Field(1.0, ge=0.0, description="Weight of masked text-token prediction.")
    image_ratio: float = Field(0.5, ge=0.0, lt=1.0, description="Share of image tokens dropped in each view.")
    text_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on text tokens in each pass.")
    mlm_ratio: float = Field(0.15, gt=0.0, lt=1.0, description="Share of real text tokens hidden (at least one).")
    temperature: float = Field(0.1, gt=0.0, description="Softmax temperature of both contrasts (SimCLR's 0.1).")


def _head(width: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, out))


def self_contrast(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE where row i of ``first`` matches only row i of ``second`` (inputs L2-normalised)."""
    return clip_loss(first @ second.T / temperature, torch.eye(len(first), dtype=torch.bool, device=first.device))


def hide_tokens(mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """B x T: True at a random ``ratio`` share of each row's real tokens (at least one per row)."""
    scores = torch.rand(mask.shape).to(mask.device).masked_fill(~mask, 2.0)
    n_hidden = (mask.sum(1).float() * ratio).round().long().clamp(min=1)
    rank = scores.argsort(dim=1).argsort(dim=1)
    return (rank < n_hidden[:, None]) & mask


@register_objective("unimodal")
class UnimodalObjective(Objective):
    """Weighted sum of the three unimodal terms (weights of 0 skip a term)."""

    Options = UnimodalOptions

    def __init__(self, options: UnimodalOptions, context: ObjectiveContext) -> None:
        super().__init__(options, context)
        self.image_head = _head(context.width, context.embed_dim)
        self.text_head = _head(context.width, context.embed_dim)
        self.mask_vector = nn.Parameter(torch.zeros(context.text_dim))
        self.token_head = nn.Linear(context.width, context.text_dim)

    def image_term(self, batch: PairBatch) -> torch.Tensor:
        ratio = self.options.image_ratio
        views = [
            F.normalize(self.image_head(batch.adaptor.image_features(drop_tokens(batch.image_tokens, None, ratio)[0])),
                        dim=-1)
            for _ in range(2)
        ]
        return self_contrast(*views, self.options.temperature)

    def texts(self, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's distinct paired texts (first row of each) and its text-only texts, as one tensor and mask."""
        values, inverse = torch.unique(batch.text_index, return_inverse=True)
        order = torch.arange(len(inverse), device=inverse.device)
        first = torch.full((len(values),), len(inverse), device=inverse.device)
        first = first.scatter_reduce(0, inverse, order, "amin")
        tokens, mask = batch.text_tokens[first], batch.text_mask[first]
        if batch.text_only is not None:
            extra_tokens, extra_mask = batch.text_only
            length = max(tokens.shape[1], extra_tokens.shape[1])
            tokens = torch.cat(
                [F.pad(part, (0, 0, 0, length - part.shape[1])) for part in (tokens, extra_tokens)]
            )
            mask = torch.cat([F.pad(part, (0, length - part.shape[1])) for part in (mask, extra_mask)])
        return tokens, mask

    def text_term(self, batch: PairBatch, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        dropout = self.options.text_dropout
        views = [
            F.normalize(
                self.text_head(batch.adaptor.text_tower(F.dropout(tokens, dropout, self.training), ~mask)[1]), dim=-1
            )
            for _ in range(2)
        ]
        return self_contrast(*views, self.options.temperature)

    def mlm_term(self, batch: PairBatch, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = hide_tokens(mask, self.options.mlm_ratio)
        masked = torch.where(hidden[..., None], self.mask_vector.to(tokens.dtype), tokens)
        predicted = self.token_head(batch.adaptor.text_tower(masked, ~mask)[0])
        cosine = F.cosine_similarity(predicted[hidden], tokens[hidden].float(), dim=-1)
        return (1 - cosine).mean()

    def forward(self, batch: PairBatch) -> torch.Tensor:
        options: UnimodalOptions = self.options
        loss = batch.image_tokens.new_zeros(())
        if options.image_weight:
            loss = loss + options.image_weight * self.image_term(batch)
        if options.text_weight or options.mlm_weight:
            tokens, mask = self.texts(batch)
            if options.text_weight:
                loss = loss + options.text_weight * self.text_term(batch, tokens, mask)
            if options.mlm_weight:
                loss = loss + options.mlm_weight * self.mlm_term(batch, tokens, mask)
        return loss
