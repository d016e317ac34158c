"""Cross-attention Adaptor (after arXiv 2401.01179, "Freeze the backbones"): a small transformer on frozen towers'
tokens.

Design: retrieval and probes need each modality encodable alone, so inference uses modality-specific
towers only (input projection, ``layers`` pre-LN self-attention blocks, learned-query attention pooling,
projection head, L2 norm). The two modalities are fused only during pre-training: ``fusion_layers``
bi-directional cross-attention blocks (image tokens attend to text tokens and text tokens to image
tokens) feed an image-text matching (ITM) head trained on in-batch hard negatives, next to the
contrastive loss (CLIP InfoNCE or SigLIP). ITM gradients shape the unimodal towers; the fusion blocks
and ITM head are discarded at inference. Identical texts in a batch (label sentences repeat) count as
positives of each other, not negatives.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retune.config import OptimConfig, PairLoss
from retune.evaluation.retrieval import retrieval_metrics
from retune.losses import clip_loss, sigmoid_pair_loss
from retune.training.loop import FitResult, fit

CLIP_INIT_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = 100.0
SIGLIP_INIT_SCALE = math.log(10.0)
SIGLIP_INIT_BIAS = -10.0


class _Block(nn.Module):
    """Pre-LN transformer block: self-attention, optional cross-attention to another token set, MLP."""

    def __init__(self, width: int, heads: int, dropout: float, cross: bool) -> None:
        super().__init__()
        self.self_norm = nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.cross_norm = nn.LayerNorm(width) if cross else None
        self.cross_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True) if cross else None
        self.mlp = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, 4 * width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(4 * width, width),
        )

    def forward(
        self,
        x: torch.Tensor,
        padding: torch.Tensor | None,
        other: torch.Tensor | None = None,
        other_padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.self_norm(x)
        x = x + self.self_attn(h, h, h, key_padding_mask=padding, need_weights=False)[0]
        if self.cross_attn is not None:
            x = (
                x
                + self.cross_attn(
                    self.cross_norm(x), other, other, key_padding_mask=other_padding, need_weights=False
                )[0]
            )
        return x + self.mlp(x)


class _AttentionPool(nn.Module):
    """One learned query attending over the tokens (padding ignored)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, width) * width**-0.5)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
        pooled = self.attn(self.query.expand(len(x), -1, -1), x, x, key_padding_mask=padding, need_weights=False)[0]
        return self.norm(pooled[:, 0])


class _Tower(nn.Module):
    """One modality: frozen-token projection to ``width``, self-attention blocks, attention pooling."""

    def __init__(self, in_dim: int, width: int, layers: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, width))
        self.blocks = nn.ModuleList(_Block(width, heads, dropout, cross=False) for _ in range(layers))
        self.pool = _AttentionPool(width, heads)

    def forward(self, tokens: torch.Tensor, padding: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.project(tokens)
        for block in self.blocks:
            x = block(x, padding)
        return x, self.pool(x, padding)


class CrossAttentionAdaptor(nn.Module):
    """Image and text towers on frozen tokens into one L2-normalised space, plus a pre-training-only fusion/ITM
    branch."""

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        width: int = 256,
        embed_dim: int = 128,
        layers: int = 2,
        heads: int = 4,
        fusion_layers: int = 1,
        dropout: float = 0.1,
        loss: PairLoss = "clip",
    ) -> None:
        super().__init__()
        if loss not in get_args(PairLoss):
            raise ValueError(f"loss must be 'clip' or 'siglip', got {loss!r}")
        self.loss_name = loss
        self.image_tower = _Tower(image_dim, width, layers, heads, dropout)
        self.text_tower = _Tower(text_dim, width, layers, heads, dropout)
        self.image_head = nn.Linear(width, embed_dim)
        self.text_head = nn.Linear(width, embed_dim)
        self.image_fusion = nn.ModuleList(_Block(width, heads, dropout, cross=True) for _ in range(fusion_layers))
        self.text_fusion = nn.ModuleList(_Block(width, heads, dropout, cross=True) for _ in range(fusion_layers))
        self.fused_pool = _AttentionPool(width, heads)
        self.itm_head = nn.Linear(2 * width, 1)
        initial_scale = math.log(1 / CLIP_INIT_TEMPERATURE) if loss == "clip" else SIGLIP_INIT_SCALE
        self.logit_scale = nn.Parameter(torch.tensor(initial_scale))
        self.logit_bias = nn.Parameter(torch.tensor(SIGLIP_INIT_BIAS), requires_grad=loss == "siglip")

    # -- inference: each modality alone ------------------------------------------------------
    def image_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled adapted image features (N x width), the input of downstream probes."""
        return self.image_tower(tokens, None)[1]

    def encode_image(self, tokens: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (N x embed_dim) from image tokens (N x T x D_img)."""
        return F.normalize(self.image_head(self.image_features(tokens)), dim=-1)

    def encode_text(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings (N x embed_dim) from text tokens (N x T x D_txt); ``mask`` True = real
        token."""
        return F.normalize(self.text_head(self.text_tower(tokens, ~mask)[1]), dim=-1)

    # -- pre-training ------------------------------------------------------------------------
    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def contrastive_loss(self, image: torch.Tensor, text: torch.Tensor, same_text: torch.Tensor) -> torch.Tensor:
        """CLIP or SigLIP loss where ``same_text[i, j]`` marks pairs that are positives (the diagonal and repeated
        texts)."""
        logits = self.scale() * image @ text.T
        if self.loss_name == "siglip":
            return sigmoid_pair_loss(logits + self.logit_bias, same_text)
        return clip_loss(logits, same_text)

    def fused_features(
        self, image_states: torch.Tensor, text_states: torch.Tensor, text_padding: torch.Tensor
    ) -> torch.Tensor:
        """Joint vector (N x 2*width) per (image, text) row pair after bi-directional cross-attention between the two
        token sets (the ITM head's input; VQA answer heads read it too)."""
        image_x, text_x = image_states, text_states
        for image_block, text_block in zip(self.image_fusion, self.text_fusion):
            image_x, text_x = (
                image_block(image_x, None, text_x, text_padding),
                text_block(text_x, text_padding, image_x, None),
            )
        return torch.cat([self.fused_pool(image_x, None), self.fused_pool(text_x, text_padding)], dim=-1)

    def match_logits(
        self, image_states: torch.Tensor, text_states: torch.Tensor, text_padding: torch.Tensor
    ) -> torch.Tensor:
        """ITM logit per (image, text) row pair, from the fused features."""
        return self.itm_head(self.fused_features(image_states, text_states, text_padding))[:, 0]

    def pretraining_loss(
        self,
        image_tokens: torch.Tensor,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        text_ids: torch.Tensor,
        itm_weight: float = 1.0,
    ) -> torch.Tensor:
        """Contrastive loss + ``itm_weight`` x ITM loss on hardest in-batch negatives (pairs with a distinct text)."""
        padding = ~text_mask
        image_states, image_pooled = self.image_tower(image_tokens, None)
        text_states, text_pooled = self.text_tower(text_tokens, padding)
        image = F.normalize(self.image_head(image_pooled), dim=-1)
        text = F.normalize(self.text_head(text_pooled), dim=-1)
        same_text = text_ids[:, None] == text_ids[None, :]
        loss = self.contrastive_loss(image, text, same_text)
        if itm_weight == 0 or not self.image_fusion or same_text.all():
            return loss
        rows = torch.arange(len(image), device=image.device)
        similarity = (image @ text.T).detach().masked_fill(same_text, -math.inf)
        has_negative = ~same_text.all(dim=1)
        hard_text = similarity.argmax(dim=1)[has_negative]  # hardest distinct text for each image
        hard_image = similarity.argmax(dim=0)[has_negative]  # hardest distinct image for each text
        kept = rows[has_negative]
        image_rows = torch.cat([rows, kept, hard_image])
        text_rows = torch.cat([rows, hard_text, kept])
        targets = torch.cat([torch.ones(len(rows)), torch.zeros(2 * len(kept))]).to(image.device)
        logits = self.match_logits(image_states[image_rows], text_states[text_rows], padding[text_rows])
        return loss + itm_weight * F.binary_cross_entropy_with_logits(logits, targets)


@dataclass
class PairData:
    """Cached tokens for image-text pairs: image i goes with unique text ``text_index[i]``."""

    image_tokens: torch.Tensor  # N x T_img x D_img
    text_tokens: torch.Tensor  # U x T_txt x D_txt (unique texts)
    text_mask: torch.Tensor  # U x T_txt, True = real token
    text_index: torch.Tensor  # N, long

    def subset(self, rows: np.ndarray) -> PairData:
        """The pairs of the given image rows (texts are kept whole)."""
        rows_t = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        return PairData(self.image_tokens[rows_t], self.text_tokens, self.text_mask, self.text_index[rows_t])


@torch.no_grad()
def batched(function: Callable[..., torch.Tensor], *inputs: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Apply ``function`` to row batches of ``inputs`` without gradients and concatenate the results."""
    return torch.cat(
        [function(*(x[start : start + batch_size] for x in inputs)) for start in range(0, len(inputs[0]), batch_size)]
    )


def adaptor_retrieval(model: CrossAttentionAdaptor, pairs: PairData, batch_size: int = 256) -> dict:
    """Retrieval metrics of the adaptor's unimodal embeddings on ``pairs``."""
    model.eval()
    image = batched(model.encode_image, pairs.image_tokens, batch_size=batch_size)
    text = batched(model.encode_text, pairs.text_tokens, pairs.text_mask, batch_size=batch_size)
    return retrieval_metrics(image.cpu().numpy(), text.cpu().numpy(), pairs.text_index.cpu().numpy())


def pretrain_adaptor(
    model: CrossAttentionAdaptor,
    train: PairData,
    val: PairData | None,
    optim: OptimConfig,
    itm_weight: float = 1.0,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> FitResult:
    """Contrastive (+ITM) pre-training on cached tokens with ``fit``; early stopping on validation mean recall
    (``optim.early_stopping: loss``: on the pre-training loss of the validation pairs, taken as one batch)."""

    def pair_loss(pairs: PairData, rows: torch.Tensor) -> torch.Tensor:
        texts = pairs.text_index[rows]
        return model.pretraining_loss(
            pairs.image_tokens[rows], pairs.text_tokens[texts], pairs.text_mask[texts], texts, itm_weight
        )

    rows = torch.arange(len(train.image_tokens), device=train.image_tokens.device)
    val_score = None
    if val is not None and len(val.image_tokens):
        val_rows = torch.arange(len(val.image_tokens), device=val.image_tokens.device)
        val_score = (
            (lambda: -float(pair_loss(val, val_rows)))
            if optim.early_stopping == "loss"
            else (lambda: adaptor_retrieval(model, val)["mean_recall"])
        )
    loss_fn = lambda batch_rows, _: pair_loss(train, batch_rows)  # noqa: E731
    return fit(
        model, model.parameters(), loss_fn, rows, rows, optim, val_score=val_score, seed=seed, progress=progress
    )


def trainable_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_state(model: CrossAttentionAdaptor) -> dict[str, np.ndarray]:
    """Weights as float32 numpy arrays for a safetensors checkpoint (fusion/ITM branch included, for resuming)."""
    return {name: value.detach().cpu().float().numpy() for name, value in model.state_dict().items()}
