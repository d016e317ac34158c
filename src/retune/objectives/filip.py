"""Fine-grained alignment (FILIP, Yao et al. 2022): token-wise late-interaction similarity in the contrastive loss.

Each image token is matched to its most similar text token (and each text token to its most similar image
token); a pair's similarity is the mean of those maxima, one matrix per direction, in CLIP's InfoNCE. Tokens are
the adaptor towers' states through the pooled embeddings' heads, L2-normalised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from retune.losses import multi_positive_info_nce
from retune.objectives.base import PairBatch, register_objective
from retune.objectives.clip import ClipObjective

_NEVER_MAX = -2.0  # below any cosine: padded tokens never win a max


def late_interaction(
    image: torch.Tensor, text: torch.Tensor, text_valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image->text and text->image token-wise similarities (both B_img x B_txt) from L2-normalised tokens
    (``image`` B x T_i x D, ``text`` B x T_t x D, ``text_valid`` B x T_t True = real token)."""
    tokens = torch.einsum("aid,btd->abit", image, text)  # B_img x B_txt x T_i x T_t
    valid = text_valid[None, :, None, :]
    image_to_text = tokens.masked_fill(~valid, _NEVER_MAX).amax(dim=3).mean(dim=2)
    best_image = tokens.amax(dim=2)  # B_img x B_txt x T_t
    counts = text_valid.sum(1).clamp(min=1)[None, :]
    text_to_image = (best_image * text_valid[None]).sum(dim=2) / counts
    return image_to_text, text_to_image


@register_objective("filip")
class FilipObjective(ClipObjective):
    """Symmetric InfoNCE on the two late-interaction matrices, with a learned temperature."""

    def forward(self, batch: PairBatch) -> torch.Tensor:
        full, adaptor = batch.full, batch.adaptor
        image = F.normalize(adaptor.image_head(full.image_states), dim=-1)
        text = F.normalize(adaptor.text_head(full.text_states), dim=-1)
        image_to_text, text_to_image = late_interaction(image, text, ~full.text_padding)
        positives = batch.positives
        scale = self.scale()
        return (
            multi_positive_info_nce(scale * image_to_text, positives)
            + multi_positive_info_nce(scale * text_to_image.T, positives.T)
        ) / 2
