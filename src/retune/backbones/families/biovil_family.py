"""BioViL and BioViL-T (Microsoft) through the optional ``hi-ml-multimodal`` package: ResNet-50 + CXR-BERT, 128-d joint
space.

Weights: ``biovil`` / ``biovil-t`` read the pinned hub revision from the HF cache (downloaded there when online);
``biovil:/path/to/dir`` reads a local copy of that repo (the image ``.pt`` checkpoint plus the CXR-BERT files,
either in the folder itself or in one subfolder). The package's own ``get_biovil_image_encoder`` downloads by URL
into a temp dir and ignores the cache and offline mode, so the same ``ImageModel`` is built here from resolved files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from retune.backbones.base import Backbone, BackboneInfo, Encoded, weight_files_sha256
from retune.backbones.families.hf_family import offline_mode, translate_load_errors, weights_not_found
from retune.backbones.registry import register_backbone
from retune.devices import autocast_for
from retune.errors import WeightsNotFoundError

RESIZE = 512  # health_multimodal.image.utils.TRANSFORM_RESIZE
TRAILING_PUNCTUATION = "!?."  # stripped from prompts, as the package's TextInput does


@dataclass(frozen=True)
class _Variant:
    """One published model: hub repo and pinned revision, image checkpoint, encoder type, crop size."""

    repo_id: str
    revision: str
    image_weights: str
    encoder_type: str  # health_multimodal ImageEncoderType value
    crop_size: int


def _variants() -> dict[str, _Variant]:
    """The package's own constants (repo ids, revisions, checkpoint names) keyed by family name."""
    from health_multimodal.image.model import pretrained as hm

    return {
        "biovil": _Variant(
            hm.BIOMED_VLP_CXR_BERT_SPECIALIZED, hm.CXR_BERT_COMMIT_TAG, hm.BIOVIL_IMAGE_WEIGHTS_NAME, "resnet50", 480
        ),
        "biovil-t": _Variant(
            hm.BIOMED_VLP_BIOVIL_T, hm.BIOVIL_T_COMMIT_TAG, hm.BIOVIL_T_IMAGE_WEIGHTS_NAME, "resnet50_multi_image", 448
        ),
    }


def _require_package() -> None:
    try:
        import health_multimodal  # noqa: F401
    except ImportError as error:
        raise WeightsNotFoundError(
            "biovil backbone needs the optional extra: pip install 'retune[biovil]' "
            "(package hi-ml-multimodal; module health_multimodal is not importable)"
        ) from error


def _model_dir(spec: str, variant: _Variant, source: str) -> Path:
    """The local folder given as source, or the pinned revision's snapshot in the HF cache."""
    if source:
        path = Path(source).expanduser().resolve()
        if not path.is_dir():
            raise weights_not_found(spec, str(path))
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(variant.repo_id, revision=variant.revision, local_files_only=offline_mode()))
    except (OSError, ValueError) as error:
        download = f"huggingface-cli download {variant.repo_id} --revision {variant.revision}"
        hint = f"needs revision {variant.revision}: {download}"
        raise weights_not_found(spec, variant.repo_id, f"{hint}; {error}") from error


def _text_dir(spec: str, directory: Path) -> Path:
    """CXR-BERT files: the folder itself (a hub repo copy) or its one subfolder holding config.json."""
    if (directory / "config.json").is_file():
        return directory
    candidates = sorted(p.parent for p in directory.glob("*/config.json"))
    if not candidates:
        raise weights_not_found(spec, str(directory), "no CXR-BERT config.json in it or in a subfolder")
    return candidates[0]


class BioViLBackbone(Backbone):
    """BioViL(-T) image model and CXR-BERT; pooled outputs are the normalized 128-d projected embeddings."""

    aligned = True

    def __init__(self, family: str, source: str) -> None:
        super().__init__()
        _require_package()
        from health_multimodal.image.data.transforms import create_chest_xray_transform_for_inference
        from health_multimodal.image.model.model import ImageModel
        from health_multimodal.image.model.pretrained import JOINT_FEATURE_SIZE
        from health_multimodal.image.model.types import ImageEncoderType
        from health_multimodal.text.model import CXRBertModel, CXRBertTokenizer

        spec = f"{family}:{source}" if source else family
        self.family, self.source = family, source
        self.variant = _variants()[family]
        self.model_dir = _model_dir(spec, self.variant, source)
        image_weights = self.model_dir / self.variant.image_weights
        if not image_weights.is_file():
            raise weights_not_found(spec, str(self.model_dir), f"missing {self.variant.image_weights}")
        text_dir = _text_dir(spec, self.model_dir)
        with translate_load_errors(spec, str(text_dir)):
            self.image_model = ImageModel(
                img_encoder_type=ImageEncoderType(self.variant.encoder_type),
                joint_feature_size=JOINT_FEATURE_SIZE,
                pretrained_model_path=image_weights,
            )
            self.text_model = CXRBertModel.from_pretrained(text_dir)
            self.tokenizer = CXRBertTokenizer.from_pretrained(text_dir)
        self.image_dim = self.text_dim = JOINT_FEATURE_SIZE
        self.transform = create_chest_xray_transform_for_inference(
            resize=RESIZE, center_crop_size=self.variant.crop_size
        )

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Grayscale, stretched to 0-255 (as the package's ``load_image``), resized, cropped, copied to 3 channels."""
        from health_multimodal.image.data.io import remap_to_uint8

        gray = Image.fromarray(remap_to_uint8(np.asarray(image.convert("L"))))
        return self.transform(gray)

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor, tokens: bool = False) -> Encoded:
        pixels = pixels.to(self.device, non_blocking=True)
        with autocast_for(self.device):
            output = self.image_model(pixels)
        pooled = F.normalize(output.projected_global_embedding.float(), dim=-1)
        patches = output.projected_patch_embeddings.float().flatten(2).transpose(1, 2) if tokens else None
        return Encoded(pooled, patches)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str], tokens: bool = False) -> Encoded:
        prompts = [text.rstrip(TRAILING_PUNCTUATION) for text in texts]
        batch = self.tokenizer(prompts, add_special_tokens=True, padding="longest", return_tensors="pt").to(
            self.device
        )
        with autocast_for(self.device):
            output = self.text_model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                output_cls_projected_embedding=True,
                return_dict=True,
            )
        pooled = F.normalize(output.cls_projected_embedding.float(), dim=-1)
        return Encoded(pooled, output.last_hidden_state.float() if tokens else None)

    def fingerprint_parts(self) -> dict:
        return {
            "family": self.family,
            "source": str(self.model_dir) if self.source else f"{self.variant.repo_id}@{self.variant.revision}",
            "weights_sha256": weight_files_sha256(self.model_dir),
            "preprocess": {"gray_minmax_to_uint8": True, "resize": RESIZE, "center_crop": self.variant.crop_size},
            "text": {"pooling": "cls-projection", "normalized": True, "strip": TRAILING_PUNCTUATION},
        }


def _register(family: str, description: str) -> None:
    """``FAMILY`` (HF cache) or ``FAMILY:/path/to/dir``."""

    def factory(source: str) -> Backbone:
        return BioViLBackbone(family, source)

    register_backbone(family, BackboneInfo(family, description, family, aligned=True))(factory)


_register("biovil", "BioViL ResNet-50 + CXR-BERT-specialized, 128-d joint space (optional extra: retune[biovil])")
_register(
    "biovil-t", "BioViL-T multi-image ResNet-50 + its CXR-BERT, 128-d joint space (optional extra: retune[biovil])"
)
