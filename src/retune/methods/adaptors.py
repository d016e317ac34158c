"""Small adaptors on frozen embeddings: identity, dense (one linear layer) or mlp (two layers)."""

from __future__ import annotations

from typing import get_args

import torch
from torch import nn

from retune.config import AdaptorConfig, AdaptorKind
from retune.errors import ConfigError, unknown_name

ADAPTOR_KINDS = get_args(AdaptorKind)


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
    return nn.Sequential(nn.Dropout(dropout), body) if dropout > 0 else body


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
