"""Masked contrastive (FLIP, Li et al. 2023): CLIP on a random subset of the image and text tokens.

Dropping tokens before the adaptor's towers regularises and shortens every attention call: at ratio 0.5 each
step sees half the tokens. At ratio 0 it is CLIP exactly.
"""

from __future__ import annotations

import torch
from pydantic import Field

from retune.objectives.base import ObjectiveOptions, PairBatch, drop_tokens, encode_pairs, register_objective
from retune.objectives.clip import ClipObjective


class MaskedOptions(ObjectiveOptions):
    ratio: float = Field(0.5, ge=0.0, lt=1.0, description="Share of image and of text tokens dropped each step.")
    text_ratio: float | None = Field(
        None, ge=0.0, lt=1.0, description="Share of text tokens dropped (default: ratio)."
    )


@register_objective("masked")
class MaskedContrastiveObjective(ClipObjective):
    """CLIP's InfoNCE on the towers' output for the kept tokens only."""

    Options = MaskedOptions

    def forward(self, batch: PairBatch) -> torch.Tensor:
        options: MaskedOptions = self.options
        text_ratio = options.ratio if options.text_ratio is None else options.text_ratio
        image_tokens, _ = drop_tokens(batch.image_tokens, None, options.ratio)
        text_tokens, text_mask = drop_tokens(batch.text_tokens, batch.text_mask, text_ratio)
        encoded = encode_pairs(batch.adaptor, image_tokens, text_tokens, text_mask)
        return self.contrast(encoded.image, encoded.text, batch.positives)
