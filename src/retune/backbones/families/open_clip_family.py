"""open_clip backbones (BiomedCLIP, CheXzero, any open_clip model), with open_clip's own eval transform and tokenizer.

Sources, as open_clip 3.3 names them:
``hf-hub:ORG/REPO`` (``open_clip_config.json`` + weights from the HF cache), a directory holding the same files
(open_clip's ``local-dir:`` schema; the prefix is optional), or a built-in model name with ``@TAG`` or
``@/path/to/weights``. OpenAI-trained checkpoints such as CheXzero use QuickGELU: name the ``-quickgelu``
config (``ViT-B-32-quickgelu@/path/to/chexzero.pt``) or the activations differ from training.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from retune.backbones.base import (
    Backbone,
    BackboneInfo,
    Encoded,
    file_sha256,
    names_under,
    resampled_pyramid,
    square_pixels,
    weight_files_sha256,
)
from retune.backbones.families.hf_family import (
    looks_like_path,
    offline_mode,
    translate_load_errors,
    weights_not_found,
)
from retune.backbones.registry import register_alias, register_backbone
from retune.devices import autocast_for
from retune.errors import ConfigError

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
DENSE_STRIDES = (4, 8, 16, 32)  # ViT block outputs resampled to these (``dense_features``)
BIOMEDCLIP = "open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


@dataclass
class _Resolved:
    """What open_clip needs to build one source, plus the files and config that identify it."""

    model_name: str  # passed to open_clip: "hf-hub:...", "local-dir:...", or a built-in name
    weights_sha256: dict[str, str]
    model_cfg: dict
    locate_as: str  # hub id or directory, for error messages
    create_kwargs: dict = field(default_factory=dict)

    @property
    def text_repos(self) -> tuple[str, ...]:
        """Hub repos an HF text tower reads besides the weights (its config and tokenizer)."""
        text_cfg = self.model_cfg.get("text_cfg", {})
        names = [text_cfg.get("hf_model_name")]
        if not self.model_name.startswith(LOCAL_DIR_PREFIX):  # local dirs carry their own tokenizer files
            names.append(text_cfg.get("hf_tokenizer_name"))
        return tuple(dict.fromkeys(n for n in names if n and not looks_like_path(n) and n != self.locate_as))


def _resolve_hub(spec: str, repo_id: str) -> _Resolved:
    """Fetch (or find in the cache) the config and the weight file open_clip will load, in its order."""
    from huggingface_hub import hf_hub_download
    from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    def fetch(filename: str) -> str:
        return hf_hub_download(repo_id, filename, local_files_only=offline_mode())

    try:
        config = json.loads(Path(fetch(HF_CONFIG_NAME)).read_text())
    except (OSError, ValueError) as error:
        raise weights_not_found(spec, repo_id, error) from error
    for filename in (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME):
        try:
            weights = fetch(filename)
            break
        except (OSError, ValueError) as error:
            missing = error
    else:
        raise weights_not_found(spec, repo_id, missing)
    return _Resolved(
        HF_HUB_PREFIX + repo_id, {Path(weights).name: file_sha256(weights)}, _model_cfg(spec, config), repo_id
    )


def _resolve_dir(spec: str, directory: str) -> _Resolved:
    """A local copy of a hub repo; refuse one without weights (open_clip would silently init randomly)."""
    from open_clip.constants import HF_CONFIG_NAME

    path = Path(directory).expanduser().resolve()
    config_path = path / HF_CONFIG_NAME
    if not config_path.is_file():
        raise weights_not_found(spec, str(path), f"no {HF_CONFIG_NAME} in it")
    weights = weight_files_sha256(path)
    if not weights:
        raise weights_not_found(spec, str(path), "no .safetensors/.bin/.pth weight file in it")
    config = json.loads(config_path.read_text())
    return _Resolved(LOCAL_DIR_PREFIX + str(path), weights, _model_cfg(spec, config), str(path))


def _resolve_builtin(spec: str, source: str) -> _Resolved:
    """``NAME@TAG`` (open_clip's pretrained registry, weights via the HF cache) or ``NAME@/path/to/weights``."""
    import open_clip

    name, _, pretrained = source.partition("@")
    name = name.replace("/", "-")
    if name not in open_clip.list_models():
        raise ConfigError(f"{spec}: '{name}' is not an open_clip model name (see open_clip.list_models())")
    tags = open_clip.list_pretrained_tags_by_model(name)
    if not pretrained:
        raise ConfigError(
            f"{spec}: name the weights as {name}@TAG or {name}@/path/to/weights (tags: {', '.join(tags) or 'none'})"
        )
    model_cfg = open_clip.get_model_config(name)
    if os.path.isfile(os.path.expanduser(pretrained)):
        weights = os.path.abspath(os.path.expanduser(pretrained))
        return _Resolved(name, {Path(weights).name: file_sha256(weights)}, model_cfg, weights, {"pretrained": weights})
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not tag_cfg:
        if looks_like_path(pretrained) or Path(pretrained).suffix:
            raise weights_not_found(spec, pretrained, "no such file")
        raise ConfigError(f"{spec}: unknown pretrained tag '{pretrained}' for {name}; valid tags: {', '.join(tags)}")
    hub_repo = os.path.dirname(tag_cfg.get("hf_hub", "")) or tag_cfg.get("url", "") or pretrained
    try:
        weights = open_clip.download_pretrained(tag_cfg)
    except (OSError, ValueError, RuntimeError) as error:
        raise weights_not_found(spec, hub_repo, error) from error
    # open_clip only warns when a tag was trained with QuickGELU and the config is plain GELU; follow the tag.
    quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    model_cfg = {**model_cfg, "quick_gelu": model_cfg.get("quick_gelu", False) or quick_gelu}
    kwargs = {"pretrained": pretrained, "force_quick_gelu": quick_gelu}
    return _Resolved(name, {Path(weights).name: file_sha256(weights)}, model_cfg, hub_repo, kwargs)


def _model_cfg(spec: str, config: dict) -> dict:
    if "model_cfg" not in config:
        raise ConfigError(f"{spec}: open_clip_config.json has no 'model_cfg' section")
    return config["model_cfg"]


def resolve_source(spec: str, source: str) -> _Resolved:
    """Dispatch on the source form (see the module docstring)."""
    if source.startswith(HF_HUB_PREFIX):
        return _resolve_hub(spec, source[len(HF_HUB_PREFIX) :])
    if source.startswith(LOCAL_DIR_PREFIX):
        return _resolve_dir(spec, source[len(LOCAL_DIR_PREFIX) :])
    if "@" not in source and looks_like_path(source):
        return _resolve_dir(spec, source)
    return _resolve_builtin(spec, source)


def _image_features_and_tokens(model: torch.nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled image features and last-block patch tokens (N x T x C) in one pass."""
    visual = model.visual
    if not hasattr(visual, "forward_intermediates"):
        raise ConfigError(f"open_clip image tower {type(visual).__name__} cannot return tokens")
    output = visual.forward_intermediates(pixels, indices=1, normalize_intermediates=True, output_fmt="NCHW")
    patches = output["image_intermediates"][-1]
    return output["image_features"], patches.flatten(2).transpose(1, 2)


def _text_features_and_tokens(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled text features and the last hidden state before projection (N x T x C)."""
    text = getattr(model, "text", None)
    if text is not None and not hasattr(text, "forward_intermediates"):  # HF text towers (BiomedCLIP)
        if not hasattr(text, "output_tokens"):
            raise ConfigError(f"open_clip text tower {type(text).__name__} cannot return tokens")
        text.output_tokens = True
        try:
            return text(ids)
        finally:
            text.output_tokens = False
    try:
        output = model.forward_intermediates(text=ids, text_indices=1, normalize_intermediates=True, normalize=False)
    except (AssertionError, NotImplementedError) as error:
        raise ConfigError(f"open_clip model {type(model).__name__} cannot return text tokens: {error}") from error
    return output["text_features"], output["text_intermediates"][-1]


class OpenClipBackbone(Backbone):
    """An open_clip model: normalized ``encode_image`` / ``encode_text`` in one joint space."""

    aligned = True

    def __init__(self, source: str) -> None:
        super().__init__()
        import open_clip

        spec = f"open_clip:{source}"
        if not source:
            raise ConfigError("open_clip backbone needs a source, e.g. open_clip:hf-hub:ORG/REPO")
        self.source = source
        self.resolved = resolve_source(spec, source)
        with translate_load_errors(spec, self.resolved.locate_as, also=self.resolved.text_repos):
            self.model, _, self.transform = open_clip.create_model_and_transforms(
                self.resolved.model_name, **self.resolved.create_kwargs
            )
            self.tokenizer = open_clip.get_tokenizer(self.resolved.model_name)
        self.image_dim = self.text_dim = self.resolved.model_cfg["embed_dim"]

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image.convert("RGB"))

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor, tokens: bool = False) -> Encoded:
        pixels = pixels.to(self.device, non_blocking=True)
        with autocast_for(self.device):
            if tokens:
                pooled, patch_tokens = _image_features_and_tokens(self.model, pixels)
            else:
                pooled, patch_tokens = self.model.encode_image(pixels), None
        return Encoded(F.normalize(pooled.float(), dim=-1), patch_tokens.float() if tokens else None)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str], tokens: bool = False) -> Encoded:
        ids = self.tokenizer(list(texts)).to(self.device)
        with autocast_for(self.device):
            if tokens:
                pooled, hidden = _text_features_and_tokens(self.model, ids)
            else:
                pooled, hidden = self.model.encode_text(ids), None
        return Encoded(F.normalize(pooled.float(), dim=-1), hidden.float() if tokens else None)

    @property
    def dense_strides(self) -> tuple[int, ...]:
        """ViT towers: four blocks' patch tokens resampled to strides 4-32; other towers give none."""
        return DENSE_STRIDES if isinstance(getattr(self.model.visual, "transformer", None), torch.nn.Module) else ()

    def dense_preprocess(self, image: Image.Image, size: int) -> torch.Tensor:
        """Resized to the tower's own input size (ViT position embeddings are fixed), whatever ``size``."""
        if not self.dense_strides:
            raise self._no_dense_features()
        visual = self.model.visual
        native = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
        return square_pixels(image, native, visual.image_mean, visual.image_std)

    @torch.inference_mode()
    def dense_features(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Patch tokens of four evenly spaced blocks (the last included) as maps, resampled to strides 4-32."""
        if not self.dense_strides:
            raise self._no_dense_features()
        visual = self.model.visual
        depth = len(visual.transformer.resblocks)
        blocks = [max(depth * k // 4 - 1, 0) for k in range(1, 5)]  # a shallow tower repeats blocks
        taken = sorted(set(blocks))
        with autocast_for(self.device):
            output = visual.forward_intermediates(pixels.to(self.device), indices=taken, intermediates_only=True,
                                                  output_fmt="NCHW")
        maps = [output["image_intermediates"][taken.index(block)].float() for block in blocks]
        patch = visual.patch_size[0] if isinstance(visual.patch_size, tuple) else visual.patch_size
        return resampled_pyramid(maps, patch, DENSE_STRIDES)

    def tower(self, name: str) -> tuple[torch.nn.Module, Callable[[str], bool]] | None:
        """One open_clip model holds both towers: ``visual`` is the image tower, the rest (but the logit scale and
        bias) the text tower."""
        in_image = names_under("visual")
        if name == "image":
            return self.model, in_image
        return self.model, lambda n: not in_image(n) and not n.startswith("logit_")

    def fingerprint_parts(self) -> dict:
        return {
            "family": "open_clip",
            "model": self.resolved.model_name,
            "pretrained": self.resolved.create_kwargs.get("pretrained"),
            "weights_sha256": self.resolved.weights_sha256,
            "model_cfg": self.resolved.model_cfg,
            "preprocess": dict(self.model.visual.preprocess_cfg),
            "tokenizer": {
                "class": type(self.tokenizer).__name__,
                "context_length": getattr(self.tokenizer, "context_length", None),
            },
        }


@register_backbone(
    "open_clip",
    BackboneInfo(
        family="open_clip",
        description="open_clip model: hf-hub:ORG/REPO, a local dir with open_clip_config.json + weights, or "
                    "NAME@TAG_OR_PATH",
        example="open_clip:ViT-B-32-quickgelu@/path/to/chexzero.pt",
        aligned=True,
    ),
)
def create_open_clip(source: str) -> Backbone:
    """``open_clip:hf-hub:ORG/REPO``, ``open_clip:/path/to/dir`` or ``open_clip:NAME@TAG_OR_PATH``."""
    return OpenClipBackbone(source)


register_alias("biomedclip", BIOMEDCLIP)
