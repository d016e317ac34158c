"""Backbone families (open_clip, hf, hf-pair, biovil) loaded from tiny random models through ``create_backbone``.

Every model here is built offline in a temp dir; the hub is never contacted (HF_HUB_OFFLINE=1, empty HF_HOME).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny_models import tiny_tokenizer

from retune.backbones.registry import create_backbone, list_backbones
from retune.errors import ConfigError, WeightsNotFoundError

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "lung", "x", "ray", "normal", "effusion"]
TINY_TEXT = dict(
    vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
)
TINY_VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
)
OPEN_CLIP_HUB_ID = "test-org/tiny-openclip"
FAKE_COMMIT = "0" * 40


@pytest.fixture(autouse=True)
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty HF cache in tmp_path with offline mode on, both in the environment and in huggingface_hub."""
    import huggingface_hub.constants as hub_constants

    home = tmp_path / "hf-home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("RETUNE_TRUST_REMOTE_CODE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return cache


def save_open_clip(directory: Path, seed: int, hf_text: bool = False) -> Path:
    """A tiny open_clip model as on the hub (config + safetensors + tokenizer): ViT + built-in text (CheXzero shape),
    or with ``hf_text`` timm ViT + HF BERT text tower, its config in a local folder (BiomedCLIP shape)."""
    import open_clip
    from safetensors.torch import save_file
    from transformers import BertConfig

    directory.mkdir(parents=True, exist_ok=True)
    if hf_text:
        bert_dir = directory / "bert-config"
        BertConfig(**TINY_TEXT, max_position_embeddings=32).save_pretrained(bert_dir)
        vision_cfg = {
            "timm_model_name": "test_vit",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 160,
        }
        text_cfg = {
            "hf_model_name": str(bert_dir),
            "hf_tokenizer_name": OPEN_CLIP_HUB_ID,
            "hf_model_pretrained": False,
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": 16,
        }
    else:
        vision_cfg = {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8}
        text_cfg = {
            "context_length": 16,
            "vocab_size": len(VOCAB),
            "width": 32,
            "heads": 2,
            "layers": 2,
            "hf_tokenizer_name": OPEN_CLIP_HUB_ID,
        }
    model_cfg = {"embed_dim": 16, "vision_cfg": vision_cfg, "text_cfg": text_cfg}
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    tiny_tokenizer(VOCAB).save_pretrained(directory)
    (directory / "config.json").write_text(json.dumps({"model_type": "bert"}))  # hub tokenizer repos carry one
    torch.manual_seed(seed)
    model = (open_clip.CustomTextCLIP if hf_text else open_clip.CLIP)(**model_cfg)
    save_file(model.state_dict(), str(directory / "open_clip_model.safetensors"))
    return directory


def save_hf_dual(directory: Path, seed: int, kind: str) -> Path:
    """A tiny CLIPModel or SiglipModel saved with its image processor and tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, SiglipConfig, SiglipImageProcessor, SiglipModel

    text = dict(TINY_TEXT, max_position_embeddings=16, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    torch.manual_seed(seed)
    if kind == "clip":
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=TINY_VISION, projection_dim=24))
        processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=TINY_VISION))
        processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    tiny_tokenizer(VOCAB).save_pretrained(directory)
    return directory


def save_hf_pair(root: Path, seed: int) -> tuple[Path, Path]:
    """A tiny DINOv2 image model and a tiny BERT text model in two directories."""
    from transformers import BertConfig, BertModel, BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    image_dir, text_dir = root / "image", root / "text"
    Dinov2Model(
        Dinov2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=32, patch_size=8
        )
    ).save_pretrained(image_dir)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(image_dir)
    BertModel(BertConfig(**TINY_TEXT, max_position_embeddings=32)).save_pretrained(text_dir)
    tiny_tokenizer(VOCAB).save_pretrained(text_dir)
    return image_dir, text_dir


def build(kind: str, root: Path, seed: int) -> str:
    """Write the tiny model of one kind under ``root``; returns the spec that loads it."""
    if kind.startswith("open_clip"):
        return f"open_clip:{save_open_clip(root, seed, hf_text=kind == 'open_clip_hf_text')}"
    if kind in ("clip", "siglip"):
        return f"hf:{save_hf_dual(root, seed, kind)}"
    image_dir, text_dir = save_hf_pair(root, seed)
    return f"hf-pair:{image_dir}+{text_dir}"


def put_in_hf_cache(cache: Path, repo_id: str, files: Path) -> None:
    """Lay out a model folder as a cached hub snapshot (refs/main -> snapshots/COMMIT)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(files, repo / "snapshots" / FAKE_COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(FAKE_COMMIT)


def sample_images() -> list[Image.Image]:
    generator = torch.Generator().manual_seed(0)
    return [
        Image.fromarray(torch.randint(0, 256, size, generator=generator, dtype=torch.uint8).numpy(), "RGB")
        for size in ((40, 50, 3), (48, 64, 3))
    ]


# kind -> (image_dim, text_dim, aligned)
KINDS = {
    "open_clip": (16, 16, True),
    "open_clip_hf_text": (16, 16, True),
    "clip": (24, 24, True),
    "siglip": (32, 32, True),
    "pair": (32, 32, False),
}


def test_list_backbones_includes_families_and_biomedclip_alias():
    rows = dict(list_backbones())
    for family in ("open_clip", "hf", "hf-pair", "biovil", "biovil-t"):
        assert family in rows
    assert rows["biomedclip"].family == "open_clip"
    assert "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224" in rows["biomedclip"].description


@pytest.mark.parametrize("kind", list(KINDS))
def test_family_encodes_and_fingerprints_weights(kind, tmp_path):
    image_dim, text_dim, aligned = KINDS[kind]
    spec = build(kind, tmp_path / kind, seed=0)
    backbone = create_backbone(spec, device="cpu")
    assert (backbone.image_dim, backbone.text_dim, backbone.aligned) == (image_dim, text_dim, aligned)

    pixels = torch.stack([backbone.preprocess(image) for image in sample_images()])
    assert pixels.dtype == torch.float32 and pixels.shape[1] == 3
    images = backbone.encode_images(pixels)
    assert images.pooled.shape == (2, image_dim) and images.tokens is None
    with_tokens = backbone.encode_images(pixels, tokens=True)
    assert with_tokens.tokens.ndim == 3 and with_tokens.tokens.shape[0] == 2
    torch.testing.assert_close(with_tokens.pooled, images.pooled, atol=1e-5, rtol=1e-4)

    texts = backbone.encode_texts(["a", "b c"])
    assert texts.pooled.shape == (2, text_dim) and texts.tokens is None
    torch.testing.assert_close(texts.pooled.norm(dim=-1), torch.ones(2))
    text_tokens = backbone.encode_texts(["a", "b c"], tokens=True)
    assert text_tokens.tokens.ndim == 3 and text_tokens.tokens.shape[0] == 2
    torch.testing.assert_close(text_tokens.pooled, texts.pooled, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(texts.pooled[0], texts.pooled[1])
    if aligned:
        torch.testing.assert_close(images.pooled.norm(dim=-1), torch.ones(2))

    fingerprint = backbone.fingerprint
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint)
    assert create_backbone(spec, device="cpu").fingerprint == fingerprint
    assert build(kind, tmp_path / kind, seed=1) == spec  # same files, other weights
    assert create_backbone(spec, device="cpu").fingerprint != fingerprint


@pytest.mark.parametrize("kind", ["open_clip", "clip"])
def test_hub_id_loads_from_offline_cache(kind, tmp_path, offline_hub):
    repo_id = OPEN_CLIP_HUB_ID if kind == "open_clip" else "test-org/tiny-clip"
    build(kind, tmp_path / "files", seed=0)
    put_in_hf_cache(offline_hub, repo_id, tmp_path / "files")
    spec = f"open_clip:hf-hub:{repo_id}" if kind == "open_clip" else f"hf:{repo_id}"
    backbone = create_backbone(spec, device="cpu")
    image_dim, text_dim, _ = KINDS[kind]
    pixels = torch.stack([backbone.preprocess(image) for image in sample_images()])
    assert backbone.encode_images(pixels).pooled.shape == (2, image_dim)
    assert backbone.encode_texts(["lung", "x ray"]).pooled.shape == (2, text_dim)
    assert backbone.fingerprint_parts()["weights_sha256"]


@pytest.mark.parametrize(
    "spec_of",
    [
        lambda missing: f"open_clip:{missing}",
        lambda missing: f"hf:{missing}",
        lambda missing: f"hf-pair:{missing}+{missing}",
    ],
    ids=["open_clip", "hf", "hf-pair"],
)
def test_missing_local_dir_names_the_path(spec_of, tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(WeightsNotFoundError) as caught:
        create_backbone(spec_of(missing), device="cpu")
    message = str(caught.value)
    assert str(missing) in message and "offline mode on" in message and "\n" not in message


@pytest.mark.parametrize(
    "spec",
    ["open_clip:hf-hub:nobody/missing", "biomedclip", "hf:nobody/missing", "hf-pair:nobody/missing+nobody/missing"],
)
def test_missing_hub_weights_name_the_cache_and_how_to_download(spec, offline_hub):
    with pytest.raises(WeightsNotFoundError) as caught:
        create_backbone(spec, device="cpu")
    message = str(caught.value)
    assert str(offline_hub) in message
    assert "offline mode on" in message
    assert "huggingface-cli download" in message and "\n" not in message


def test_open_clip_dir_without_weights_is_refused_not_randomly_initialised(tmp_path):
    directory = save_open_clip(tmp_path / "oc", seed=0)
    (directory / "open_clip_model.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match="no .safetensors"):
        create_backbone(f"open_clip:{directory}", device="cpu")


def test_open_clip_names_a_missing_hf_text_tower_repo(tmp_path):
    directory = save_open_clip(tmp_path / "oc", seed=0, hf_text=True)
    config = json.loads((directory / "open_clip_config.json").read_text())
    # BiomedCLIP reads its BERT config from the hub
    config["model_cfg"]["text_cfg"]["hf_model_name"] = "test-org/tiny-bert"
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsNotFoundError, match="also needs test-org/tiny-bert"):
        create_backbone(f"open_clip:{directory}", device="cpu")


def test_open_clip_builtin_name_needs_existing_weights(tmp_path):
    with pytest.raises(ConfigError, match="ViT-B-32@TAG"):
        create_backbone("open_clip:ViT-B-32", device="cpu")
    with pytest.raises(ConfigError, match="unknown pretrained tag"):
        create_backbone("open_clip:ViT-B-32@no_such_tag", device="cpu")
    with pytest.raises(WeightsNotFoundError, match="chexzero.pt"):
        create_backbone(f"open_clip:ViT-B-32@{tmp_path / 'chexzero.pt'}", device="cpu")
    with pytest.raises(WeightsNotFoundError, match="offline mode on"):
        create_backbone("open_clip:ViT-B-32@openai", device="cpu")


def test_hf_rejects_a_model_that_is_not_a_dual_encoder(tmp_path):
    _, text_dir = save_hf_pair(tmp_path, seed=0)
    with pytest.raises(ConfigError, match="not a supported dual encoder"):
        create_backbone(f"hf:{text_dir}", device="cpu")


def test_remote_code_models_need_explicit_opt_in(tmp_path):
    _, text_dir = save_hf_pair(tmp_path, seed=0)
    config = json.loads((text_dir / "config.json").read_text())
    auto_map = {"AutoConfig": "configuration_cxrbert.CXRBertConfig", "AutoModel": "modeling_cxrbert.CXRBertModel"}
    config.update(model_type="cxr-bert", auto_map=auto_map)  # as in microsoft/BiomedVLP-CXR-BERT-specialized
    (text_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="RETUNE_TRUST_REMOTE_CODE=1"):
        create_backbone(f"hf-pair:{tmp_path / 'image'}+{text_dir}", device="cpu")


@pytest.mark.parametrize("spec", ["biovil", "biovil-t", "biovil:/some/dir"])
def test_biovil_without_the_extra_names_it(spec, monkeypatch):
    monkeypatch.setitem(sys.modules, "health_multimodal", None)  # not importable, installed or not
    with pytest.raises(WeightsNotFoundError, match=re.escape("pip install 'retune[biovil]'")):
        create_backbone(spec, device="cpu")


def test_open_clip_vit_gives_dense_maps_at_strides_4_to_32(tmp_path):
    """Segmentation on a ViT tower: four blocks' patch tokens, resampled to strides 4-32 of its own input size."""
    from PIL import Image

    backbone = create_backbone(f"open_clip:{save_open_clip(tmp_path / 'model', seed=0)}", device="cpu")
    pixels = backbone.dense_preprocess(Image.new("RGB", (70, 50)), 256)  # the tower's 32 px, not cropped
    maps = backbone.dense_features(pixels[None])
    assert tuple(pixels.shape) == (3, 32, 32)
    assert [tuple(m.shape[-2:]) for m in maps] == [(32 // s, 32 // s) for s in backbone.dense_strides]
