"""Small adaptors on frozen embeddings: identity, dense (one linear layer) or mlp (two layers)."""

from __future__ import annotations

from typing import get_args

import torch
from torch import nn

from retune.config import AdaptorConfig, AdaptorKind
from retune.errors import ConfigError, unknown_name

ADAPTOR_KINDS = get_args(AdaptorKind)


class BlockDropout(nn.Module):
    """Input dropout with Bernoulli masks drawn per block of rows: the same regulariser for a fraction of the cost.

    Every row still gets an i.i.d. Bernoulli(1 - p) mask over its features, independent of its data and scaled by
    1 / (1 - p), exactly as ``nn.Dropout``: the expected loss over masks (the objective dropout minimises) and the
    expected gradient are unchanged. Rows of one block (consecutive rows of a shuffled minibatch) share a mask, which
    correlates their gradient noise without biasing it; a batch keeps at least ``MIN_MASKS`` independent masks and a
    block never exceeds ``MAX_BLOCK_ROWS`` rows. Batches under ``2 * MIN_MASKS`` rows get one mask per row and the very
    random numbers ``nn.Dropout`` would draw. At batch 4096 mask generation (torch's ``bernoulli_``, over half of a
    training step on CPU) drops 8-fold.
    """

    MIN_MASKS = 512
    MAX_BLOCK_ROWS = 16

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return features
        keep = 1 - self.p
        rows, width = features.shape[0], features.shape[-1]
        block = min(self.MAX_BLOCK_ROWS, max(1, rows // self.MIN_MASKS))
        if block == 1 or features.dim() != 2:
            return features * torch.empty_like(features).bernoulli_(keep).div_(keep)
        masks = torch.empty(-(-rows // block), width, dtype=features.dtype, device=features.device)
        masks.bernoulli_(keep).div_(keep)
        whole = rows // block * block
        out = torch.empty_like(features)
        blocked = out[:whole].view(-1, block, width)
        torch.mul(features[:whole].view(-1, block, width), masks[: whole // block, None], out=blocked)
        torch.mul(features[whole:], masks[-1], out=out[whole:])
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MLPAdaptor(nn.Module):
    """Linear -> GELU -> Linear, with an optional linear skip path (residual)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, residual: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))
        self.skip = nn.Linear(in_dim, out_dim, bias=False) if residual else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.body(features)
        return out + self.skip(features) if self.skip is not None else out


def make_adaptor(
    kind: str, in_dim: int, out_dim: int, hidden_dim: int = 512, residual: bool = False, dropout: float = 0.0
) -> nn.Module:
    """Build one adaptor; dropout is applied to its input (a cheap regulariser for small data)."""
    if kind not in ADAPTOR_KINDS:
        raise unknown_name("adaptor", kind, ADAPTOR_KINDS)
    if kind == "identity":
        if in_dim != out_dim:
            raise ConfigError(f"identity adaptor cannot map width {in_dim} to {out_dim}; use dense or mlp")
        body: nn.Module = nn.Identity()
    elif kind == "dense":
        body = nn.Linear(in_dim, out_dim)
    else:
        body = MLPAdaptor(in_dim, out_dim, hidden_dim, residual)
    return nn.Sequential(BlockDropout(dropout), body) if dropout > 0 else body


def build_image_adaptor(config: AdaptorConfig, image_dim: int, text_dim: int) -> nn.Module:
    """The image side into the shared space; input dropout regularises it (shared by RE-tune and its baselines)."""
    width = shared_width(config.image, config.text, image_dim, text_dim, config.shared_dim)
    return make_adaptor(config.image, image_dim, width, config.hidden_dim, config.residual, config.dropout)


def build_text_adaptor(config: AdaptorConfig, image_dim: int, text_dim: int) -> nn.Module:
    """The text side into the shared space (prompts are few and fixed: no dropout)."""
    width = shared_width(config.image, config.text, image_dim, text_dim, config.shared_dim)
    return make_adaptor(config.text, text_dim, width, config.hidden_dim, config.residual)


def shared_width(image_kind: str, text_kind: str, image_dim: int, text_dim: int, requested: int) -> int:
    """Width of the shared space: forced by an identity side, else the requested width."""
    if image_kind == "identity" and text_kind == "identity":
        if image_dim != text_dim:
            raise ConfigError(f"both adaptors are identity but image width {image_dim} != text width {text_dim}")
        return image_dim
    if image_kind == "identity":
        return image_dim
    if text_kind == "identity":
        return text_dim
    return requested
