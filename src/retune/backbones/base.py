"""What every frozen backbone provides: two encoders, image preprocessing and a fingerprint."""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from retune.errors import ConfigError


def names_under(*prefixes: str) -> Callable[[str], bool]:
    """Predicate: a module/parameter name lies under one of ``prefixes`` (for ``Backbone.tower``)."""
    return lambda name: any(name == p or name.startswith(p + ".") for p in prefixes)


@dataclass
class Encoded:
    """Output of one encoder call: pooled vectors (N x D) and, on request, tokens (N x T x D')."""

    pooled: torch.Tensor
    tokens: torch.Tensor | None = None


@dataclass(frozen=True)
class BackboneInfo:
    """Registry entry shown by ``retune backbones``."""

    family: str
    description: str
    example: str
    aligned: bool  # image and text embeddings share one space (zero-shot is meaningful)


class Backbone(ABC):
    """A frozen image encoder + text encoder pair.

    Subclasses load their weights in ``__init__`` and implement the three encode/preprocess
    methods. ``fingerprint`` keys every cached embedding: it changes when the weights or the
    preprocessing change, so a store never mixes vectors from different models.
    """

    spec: str  # the string it was built from, e.g. "default" or "open_clip:hf-hub:..."
    aligned: bool = False
    image_dim: int
    text_dim: int
    dense_strides: tuple[int, ...] = ()  # strides of the maps ``dense_features`` gives (empty: it gives none)

    def __init__(self) -> None:
        self.device = torch.device("cpu")

    @abstractmethod
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Turn one decoded RGB PIL image into the CHW float tensor the image encoder expects."""

    @abstractmethod
    def encode_images(self, pixels: torch.Tensor, tokens: bool = False) -> Encoded:
        """Encode a preprocessed batch (N x C x H x W) on ``self.device``; no gradients."""

    @abstractmethod
    def encode_texts(self, texts: list[str], tokens: bool = False) -> Encoded:
        """Encode a list of strings; pooled output is one vector per string."""

    @abstractmethod
    def fingerprint_parts(self) -> dict:
        """Everything that determines the embeddings: model id, weight hashes, preprocessing."""

    def dense_preprocess(self, image: Image.Image, size: int) -> torch.Tensor:
        """One decoded image resized (not cropped: every pixel keeps its place) to size x size and normalised as the
        image tower expects, for ``dense_features``."""
        raise self._no_dense_features()

    def dense_features(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Multi-scale feature maps of a ``dense_preprocess`` batch, finest first (N x C_i x H/s x W/s for each
        stride s of ``dense_strides``), for segmentation heads; no gradients."""
        raise self._no_dense_features()

    def _no_dense_features(self) -> ConfigError:
        return ConfigError(f"backbone '{self.spec}' gives no dense feature maps; segmentation needs a backbone "
                           "that does (e.g. default)")

    def tower(self, name: str) -> tuple[torch.nn.Module, Callable[[str], bool]] | None:
        """Where encoder tower ``name`` (image, text) lives, for tuning: (module, which of its parameter/module names
        belong to the tower), or None if it cannot be located. Default: an ``image_model`` / ``text_model``
        attribute; families holding both towers in one module override this."""
        module = getattr(self, f"{name}_model", None)
        return (module, lambda _: True) if isinstance(module, torch.nn.Module) else None

    @property
    def modules(self) -> list[torch.nn.Module]:
        """The torch modules this backbone owns (used to move devices and to freeze)."""
        return [m for m in vars(self).values() if isinstance(m, torch.nn.Module)]

    def to(self, device: str | torch.device) -> Backbone:
        self.device = torch.device(device)
        for module in self.modules:
            module.to(self.device)
        return self

    def freeze(self) -> Backbone:
        """Put every module in eval mode with gradients off (the encoders are never trained here)."""
        for module in self.modules:
            module.eval()
            for parameter in module.parameters():
                parameter.requires_grad_(False)
        return self

    @property
    def fingerprint(self) -> str:
        """Short stable hash of ``fingerprint_parts`` (16 hex chars)."""
        payload = json.dumps(self.fingerprint_parts(), sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def describe(self) -> dict:
        """JSON-ready description saved next to stores and checkpoints."""
        return {
            "spec": self.spec,
            "fingerprint": self.fingerprint,
            "image_dim": self.image_dim,
            "text_dim": self.text_dim,
            "aligned": self.aligned,
            "parts": self.fingerprint_parts(),
        }


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a weight file, memoised per (path, size, mtime) for the life of the process."""
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


def weight_files_sha256(directory: str | os.PathLike) -> dict[str, str]:
    """Hashes of the weight files (safetensors/bin/pt/pth) in a model directory, by file name."""
    suffixes = {".safetensors", ".bin", ".pt", ".pth"}
    root = Path(directory)
    return {
        str(p.relative_to(root)): file_sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in suffixes
    }


def square_pixels(image: Image.Image, size: int, mean: tuple, std: tuple) -> torch.Tensor:
    """An image resized (bicubic, not cropped: every pixel keeps its place) to size x size, scaled to [0, 1] and
    normalised: the input of ``Backbone.dense_features``."""
    from torchvision.transforms.v2 import functional

    pixels = functional.pil_to_tensor(image if image.mode == "RGB" else image.convert("RGB"))
    bicubic = functional.InterpolationMode.BICUBIC
    pixels = functional.resize(pixels, [size, size], interpolation=bicubic, antialias=True)
    return functional.normalize(functional.to_dtype(pixels, torch.float32, scale=True), list(mean), list(std))


def resampled_pyramid(maps: list[torch.Tensor], stride: int, strides: tuple[int, ...]) -> list[torch.Tensor]:
    """Single-stride maps (a ViT's blocks, all at ``stride``) resampled to ``strides`` (one each), the simple feature
    pyramid of ViTDet / SETR, so the same heads serve plain ViTs."""
    resize = torch.nn.functional.interpolate
    return [
        resize(feature_map, scale_factor=stride / target, mode="bilinear", align_corners=False)
        if target != stride else feature_map
        for feature_map, target in zip(maps, strides)
    ]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average token vectors over real (unmasked) tokens, as sentence-transformers does."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
