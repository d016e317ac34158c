"""Token sources for VQA: image tokens and question/answer tokens, read from the store when the tower is frozen or
computed with gradients through the tuned tower."""

from __future__ import annotations

import numpy as np
import torch

from retune.backbones.base import Backbone
from retune.data.pixels import PixelsOnAccess
from retune.tuning.split import differentiable


class ImageTokens:
    """Image tokens (N x T x D) per image row: the store's cached tokens, or the tuned image tower on pixels."""

    def __init__(self, cached: torch.Tensor | None = None, pixels: torch.Tensor | PixelsOnAccess | None = None,
                 backbone: Backbone | None = None) -> None:
        if (cached is None) == (pixels is None):
            raise ValueError("give cached tokens, or pixels with the tuned backbone")
        self.cached, self.pixels, self.backbone = cached, pixels, backbone
        self.encode = None if backbone is None else differentiable(backbone.encode_images)

    @property
    def tuned(self) -> bool:
        return self.cached is None

    def __len__(self) -> int:
        return len(self.cached if self.cached is not None else self.pixels)

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        if self.cached is not None:
            return self.cached[rows.to(self.cached.device)]
        pixels = self.pixels[rows.cpu()].to(self.backbone.device)
        return self.encode(pixels, tokens=True).tokens.float()


class TextTokens:
    """Token vectors of a fixed list of texts (questions and candidate answers), zero-padded to ``max_tokens`` with a
    mask: cached (frozen text tower) or encoded with gradients through the tuned tower on each call."""

    def __init__(self, texts: list[str], tokens: np.ndarray, mask: np.ndarray,
                 backbone: Backbone | None = None) -> None:
        """``tokens``/``mask`` come from the frozen tower (``store.embed.text_token_embeddings``); with a tuned
        ``backbone`` only the token counts are kept from them."""
        self.texts = list(texts)
        self.mask = torch.from_numpy(np.asarray(mask, dtype=bool))
        self.tokens = None if backbone is not None else torch.from_numpy(np.ascontiguousarray(tokens))
        self.backbone = backbone
        self.encode = None if backbone is None else differentiable(backbone.encode_texts)

    @property
    def max_tokens(self) -> int:
        return self.mask.shape[1]

    def __call__(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = ids.cpu()
        mask = self.mask[ids]
        if self.tokens is not None:
            return self.tokens[ids], mask
        hidden = self.encode([self.texts[i] for i in ids.tolist()], tokens=True).tokens.float()[:, : self.max_tokens]
        padded = torch.nn.functional.pad(hidden, (0, 0, 0, self.max_tokens - hidden.shape[1]))
        return padded * mask.to(padded.device)[..., None], mask
