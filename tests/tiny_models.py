"""Tiny models built offline for tests that need a real Hugging Face or open_clip component without a download:
a WordPiece tokenizer and random open_clip / CLIPModel / DINOv2+BERT checkpoints written to a folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def tiny_tokenizer(vocab: list[str]):
    """A BERT-style WordPiece tokenizer over ``vocab`` (which holds [PAD] [UNK] [CLS] [SEP] [MASK]), no download."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=16,
    )


VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "no",
    "lung",
    "effusion",
    "opacity",
    "normal",
    "chest",
    "x",
    "ray",
    "of",
    "the",
]


def tiny_open_clip(directory: Path) -> str:
    """open_clip ViT + built-in text transformer (CheXzero shape), width 32, 2 layers each."""
    import open_clip
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {
            "context_length": 16,
            "vocab_size": len(VOCAB),
            "width": 32,
            "heads": 2,
            "layers": 2,
            "hf_tokenizer_name": "test-org/tiny",
        },
    }
    (directory / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}})
    )
    tiny_tokenizer(VOCAB).save_pretrained(directory)
    (directory / "config.json").write_text(json.dumps({"model_type": "bert"}))
    torch.manual_seed(0)
    save_file(open_clip.CLIP(**model_cfg).state_dict(), str(directory / "open_clip_model.safetensors"))
    return f"open_clip:{directory}"


def tiny_hf_clip(directory: Path) -> str:
    """transformers CLIPModel, width 32, 2 layers per tower."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    layers = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    torch.manual_seed(0)
    CLIPModel(
        CLIPConfig(
            text_config=dict(
                layers,
                vocab_size=len(VOCAB),
                max_position_embeddings=16,
                pad_token_id=0,
                bos_token_id=2,
                eos_token_id=3,
            ),
            vision_config=dict(layers, image_size=32, patch_size=8),
            projection_dim=24,
        )
    ).save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(directory)
    tiny_tokenizer(VOCAB).save_pretrained(directory)
    return f"hf:{directory}"


def tiny_hf_pair(root: Path) -> str:
    """DINOv2 image model + BERT text model (the RAD-DINO + CXR-BERT shape)."""
    from transformers import BertConfig, BertModel, BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(
        Dinov2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=32, patch_size=8
        )
    ).save_pretrained(root / "image")
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root / "image"
    )
    BertModel(
        BertConfig(
            vocab_size=len(VOCAB),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=32,
        )
    ).save_pretrained(root / "text")
    tiny_tokenizer(VOCAB).save_pretrained(root / "text")
    return f"hf-pair:{root / 'image'}+{root / 'text'}"
