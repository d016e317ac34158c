"""Hugging Face backbones: aligned dual encoders (``hf:``) and unaligned image + text pairs (``hf-pair:``).

Sources are hub ids (resolved through the HF cache; ``HF_HUB_OFFLINE=1`` keeps it local) or directories
written by ``save_pretrained``. The hub helpers here (offline mode, locating and hashing a model folder,
turning a loader's missing-file error into one ``WeightsNotFoundError`` line) are shared by the other families.

Remote code stays off: models that need it (CXR-BERT) load only with ``RETUNE_TRUST_REMOTE_CODE=1``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from retune.backbones.base import Backbone, BackboneInfo, Encoded, mean_pool, names_under, weight_files_sha256
from retune.backbones.registry import register_backbone
from retune.devices import autocast_for
from retune.errors import ConfigError, WeightsNotFoundError

TRUST_REMOTE_CODE_ENV = "RETUNE_TRUST_REMOTE_CODE"
MAX_TEXT_TOKENS = 512
# Dual-encoder model types and the text padding each was trained with (SigLIP: fixed length).
DUAL_ENCODER_PADDING = {"clip": "longest", "siglip": "max_length"}
# how to pass local dirs, when not FAMILY:DIR
LOCAL_FORMS = {"hf-pair": "hf-pair:/path/to/image_dir+/path/to/text_dir"}


# ---------------------------------------------------------------- shared hub helpers


def offline_mode() -> bool:
    """True when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set (read now, not only at import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or env.strip().lower() in {"1", "true", "yes", "on"}


def hub_cache_dir() -> str:
    """The folder the HF cache lives in (``huggingface_hub.constants.HF_HUB_CACHE``)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def hub_kwargs() -> dict:
    """``from_pretrained`` options: stay local when offline, run remote code only when opted in."""
    return {"local_files_only": offline_mode(), "trust_remote_code": os.environ.get(TRUST_REMOTE_CODE_ENV) == "1"}


def looks_like_path(source: str) -> bool:
    """A local directory (existing, or written like a path) rather than an ``org/name`` hub id."""
    return os.path.exists(source) or source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source


def locate_model_dir(source: str) -> Path | None:
    """The folder holding a model's files: the local directory, or its snapshot in the HF cache."""
    if looks_like_path(source):
        path = Path(source).expanduser()
        return path if path.is_dir() else None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, local_files_only=True))
    except (OSError, ValueError):
        return None


def model_dir_sha256(source: str) -> dict[str, str]:
    """Hashes of the weight files of a loaded model, found in its local dir or cache snapshot."""
    directory = locate_model_dir(source)
    if directory is None:
        raise WeightsNotFoundError(
            f"'{source}' loaded but its files are not in {hub_cache_dir()}; cannot fingerprint it"
        )
    return weight_files_sha256(directory)


def _first_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text[:limit] + ("..." if len(text) > limit else "")


def weights_not_found(
    spec: str, source: str, cause: BaseException | str | None = None, also: tuple[str, ...] = ()
) -> WeightsNotFoundError:
    """One line: what was missing, where we looked, whether offline mode is on, and how to provide it.

    ``also`` names further hub repos the model reads (e.g. BiomedCLIP's BERT config and tokenizer)."""
    family = spec.partition(":")[0]
    local_form = LOCAL_FORMS.get(family, f"{family}:/path/to/dir")
    offline = offline_mode()
    if looks_like_path(source):
        where = f"local path {Path(source).expanduser().resolve()}"
        fix = f"copy the model files (config and weights) there, or pass another directory ({local_form})"
    else:
        where = f"the Hugging Face cache {hub_cache_dir()}" + ("" if offline else " and huggingface.co")
        fix = (
            f"on a connected machine run `huggingface-cli download {source}` (or `hf download {source}`) and copy "
            f"its cache folder here (point HF_HOME at it), or pass a local directory ({local_form})"
        )
    if also:
        fix += f"; it also needs {', '.join(also)} in the same cache (`huggingface-cli download` each)"
    mode = "on" if offline else "off"
    message = f"{spec}: weights for '{source}' not found; looked in {where}; offline mode {mode} (HF_HUB_OFFLINE)"
    message += f"; to fix: {fix}"
    if cause:
        message += f" [{_first_line(cause) if isinstance(cause, BaseException) else cause}]"
    return WeightsNotFoundError(message)


@contextlib.contextmanager
def translate_load_errors(spec: str, source: str, also: tuple[str, ...] = ()) -> Iterator[None]:
    """Re-raise a loader's missing-file errors as WeightsNotFoundError, other load refusals as ConfigError."""
    try:
        yield
    except (OSError, ValueError) as error:
        if "trust_remote_code" in str(error):
            raise ConfigError(
                f"{spec}: '{source}' needs its own Python code from the hub; review it, then set "
                f"{TRUST_REMOTE_CODE_ENV}=1 to allow it"
            ) from error
        if isinstance(error, ValueError) and locate_model_dir(source) is not None:
            raise ConfigError(f"{spec}: cannot load '{source}': {_first_line(error)}") from error
        raise weights_not_found(spec, source, error, also) from error


def source_label(source: str) -> str:
    """How a source appears in a fingerprint: the absolute path for directories, else the hub id."""
    return str(Path(source).expanduser().resolve()) if looks_like_path(source) else source


# ---------------------------------------------------------------- shared HF image handling


def processor_pixels(processor, image: Image.Image) -> torch.Tensor:
    """Run a HF image processor on one PIL image; returns the CHW float tensor."""
    return processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0].float()


def processor_fingerprint(processor) -> dict:
    """The image processor's class and settings (resize, crop, mean/std) for the fingerprint."""
    return {"class": type(processor).__name__, "config": processor.to_dict()}


def patch_tokens(hidden: torch.Tensor, pixels: torch.Tensor, patch_size: int | None) -> torch.Tensor:
    """The patch-grid tokens of a ViT's last hidden state (CLS/register prefix dropped); all tokens if no grid."""
    if not patch_size:
        return hidden
    count = (pixels.shape[-2] // patch_size) * (pixels.shape[-1] // patch_size)
    return hidden[:, hidden.shape[1] - count :]


def _projected_and_hidden(output) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``get_*_features`` gives a tensor (transformers 4) or a ModelOutput with projected ``pooler_output`` (5)."""
    if isinstance(output, torch.Tensor):
        return output, None
    return output.pooler_output, output.last_hidden_state


# ---------------------------------------------------------------- hf: CLIP / SigLIP dual encoders


class HFDualEncoder(Backbone):
    """CLIPModel or SiglipModel: projected, normalized image/text features in one joint space."""

    aligned = True

    def __init__(self, source: str) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

        spec = f"hf:{source}"
        if not source:
            raise ConfigError("hf backbone needs a source: hf:ORG/NAME or hf:/path/to/dir")
        self.source = source
        with translate_load_errors(spec, source):
            config = AutoConfig.from_pretrained(source, **hub_kwargs())
            if config.model_type not in DUAL_ENCODER_PADDING:
                raise ConfigError(
                    f"{spec}: model type '{config.model_type}' is not a supported dual encoder "
                    f"(supported: {', '.join(DUAL_ENCODER_PADDING)}); use hf-pair:IMAGE+TEXT for separate towers"
                )
            self.model = AutoModel.from_pretrained(source, config=config, **hub_kwargs())
            self.image_processor = AutoImageProcessor.from_pretrained(source, **hub_kwargs())
            self.tokenizer = AutoTokenizer.from_pretrained(source, **hub_kwargs())
        self.model_type = config.model_type
        self.padding = DUAL_ENCODER_PADDING[config.model_type]
        self.max_text_tokens = config.text_config.max_position_embeddings
        projection = getattr(config, "projection_dim", None)
        self.image_dim = projection or config.vision_config.hidden_size
        self.text_dim = (
            projection or getattr(config.text_config, "projection_size", None) or config.text_config.hidden_size
        )

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return processor_pixels(self.image_processor, image)

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor, tokens: bool = False) -> Encoded:
        pixels = pixels.to(self.device, non_blocking=True)
        with autocast_for(self.device):
            pooled, hidden = _projected_and_hidden(self.model.get_image_features(pixel_values=pixels))
            if tokens and hidden is None:
                hidden = self.model.vision_model(pixel_values=pixels).last_hidden_state
        patches = patch_tokens(hidden.float(), pixels, self.model.config.vision_config.patch_size) if tokens else None
        return Encoded(F.normalize(pooled.float(), dim=-1), patches)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str], tokens: bool = False) -> Encoded:
        batch = self.tokenizer(
            list(texts), padding=self.padding, truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
        )
        inputs = {key: value.to(self.device) for key, value in batch.items() if key in ("input_ids", "attention_mask")}
        with autocast_for(self.device):
            pooled, hidden = _projected_and_hidden(self.model.get_text_features(**inputs))
            if tokens and hidden is None:
                hidden = self.model.text_model(**inputs).last_hidden_state
        return Encoded(F.normalize(pooled.float(), dim=-1), hidden.float() if tokens else None)

    def tower(self, name: str) -> tuple[torch.nn.Module, Callable[[str], bool]] | None:
        """CLIP / SigLIP hold both towers in one model: vision_model (+ projection) and text_model (+ projection)."""
        if not hasattr(self.model, "vision_model"):
            return None
        side = "vision" if name == "image" else "text"
        return self.model, names_under(f"{side}_model", "visual_projection" if side == "vision" else "text_projection")

    def fingerprint_parts(self) -> dict:
        return {
            "family": "hf",
            "source": source_label(self.source),
            "model_type": self.model_type,
            "weights_sha256": model_dir_sha256(self.source),
            "preprocess": processor_fingerprint(self.image_processor),
            "text": {
                "tokenizer": type(self.tokenizer).__name__,
                "padding": self.padding,
                "max_tokens": self.max_text_tokens,
            },
        }


# ---------------------------------------------------------------- hf-pair: separate image and text models


class HFPair(Backbone):
    """Any HF image model + any HF text model; pooled image = pooler/CLS, pooled text = masked mean (normalized)."""

    aligned = False

    def __init__(self, source: str) -> None:
        super().__init__()
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        spec = f"hf-pair:{source}"
        self.image_source, plus, self.text_source = source.partition("+")
        if not (plus and self.image_source and self.text_source):
            raise ConfigError(f"{spec}: expected hf-pair:IMAGE_ID_OR_DIR+TEXT_ID_OR_DIR")
        with translate_load_errors(spec, self.image_source):
            self.image_model = AutoModel.from_pretrained(self.image_source, **hub_kwargs())
            self.image_processor = AutoImageProcessor.from_pretrained(self.image_source, **hub_kwargs())
        with translate_load_errors(spec, self.text_source):
            self.text_model = AutoModel.from_pretrained(self.text_source, **hub_kwargs())
            self.tokenizer = AutoTokenizer.from_pretrained(self.text_source, **hub_kwargs())
        image_config = self.image_model.config
        self.image_dim = getattr(image_config, "hidden_size", None) or image_config.hidden_sizes[-1]
        self.text_dim = self.text_model.config.hidden_size
        self.max_text_tokens = min(
            self.tokenizer.model_max_length,
            getattr(self.text_model.config, "max_position_embeddings", MAX_TEXT_TOKENS),
            MAX_TEXT_TOKENS,
        )

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return processor_pixels(self.image_processor, image)

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor, tokens: bool = False) -> Encoded:
        pixels = pixels.to(self.device, non_blocking=True)
        with autocast_for(self.device):
            output = self.image_model(pixel_values=pixels)
        hidden = output.last_hidden_state.float()
        pooler = getattr(output, "pooler_output", None)
        if hidden.ndim == 4:  # convolutional models: N x C x H x W
            pooled = pooler.flatten(1).float() if pooler is not None else hidden.mean(dim=(2, 3))
            patches = hidden.flatten(2).transpose(1, 2)
        else:
            pooled = pooler.float() if pooler is not None else hidden[:, 0]
            patches = patch_tokens(hidden, pixels, getattr(self.image_model.config, "patch_size", None))
        return Encoded(pooled, patches if tokens else None)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str], tokens: bool = False) -> Encoded:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
        )
        batch = {key: value.to(self.device) for key, value in batch.items()}
        with autocast_for(self.device):
            hidden = self.text_model(**batch).last_hidden_state
        hidden = hidden.float()
        pooled = F.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1)
        return Encoded(pooled, hidden if tokens else None)

    def fingerprint_parts(self) -> dict:
        return {
            "family": "hf-pair",
            "image": {
                "source": source_label(self.image_source),
                "weights_sha256": model_dir_sha256(self.image_source),
                "preprocess": processor_fingerprint(self.image_processor),
                "pooling": "pooler_output-or-cls",
            },
            "text": {
                "source": source_label(self.text_source),
                "weights_sha256": model_dir_sha256(self.text_source),
                "tokenizer": type(self.tokenizer).__name__,
                "pooling": "mean",
                "normalized": True,
                "max_tokens": self.max_text_tokens,
            },
        }


@register_backbone(
    "hf",
    BackboneInfo(
        family="hf",
        description="Hugging Face CLIP/SigLIP dual encoder from a hub id (HF cache) or a save_pretrained directory",
        example="hf:openai/clip-vit-base-patch32",
        aligned=True,
    ),
)
def create_hf(source: str) -> Backbone:
    """``hf:ORG/NAME`` or ``hf:/path/to/dir``."""
    return HFDualEncoder(source)


@register_backbone(
    "hf-pair",
    BackboneInfo(
        family="hf-pair",
        description="Separate HF image model + HF text model (towers not aligned); CXR-BERT needs "
                    "RETUNE_TRUST_REMOTE_CODE=1",
        example="hf-pair:microsoft/rad-dino+microsoft/BiomedVLP-CXR-BERT-specialized",
        aligned=False,
    ),
)
def create_hf_pair(source: str) -> Backbone:
    """``hf-pair:IMAGE_ID_OR_DIR+TEXT_ID_OR_DIR``."""
    return HFPair(source)
