"""Cross-attention adaptor on synthetic tokens: shapes, unimodal encoding, losses, pre-training, checkpoints,
text-token cache."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file

from retune.backbones.base import Backbone, Encoded
from retune.config import AdaptorExperimentConfig, OptimConfig
from retune.data.table import ImageTable
from retune.errors import StoreError
from retune.evaluation.retrieval import retrieval_metrics
from retune.experiments.adaptor import fraction_rows, label_sentences, pair_texts
from retune.methods.checkpoint import save_checkpoint
from retune.methods.xattn_adaptor import (
    CrossAttentionAdaptor,
    PairData,
    adaptor_retrieval,
    model_state,
    pretrain_adaptor,
)
from retune.store import EmbeddingStore
from retune.store.embed import text_token_embeddings

IMAGE_DIM, TEXT_DIM, IMAGE_TOKENS, TEXT_TOKENS, LATENT = 12, 10, 5, 8, 6
WIDTH, EMBED = 16, 8


def tiny_model(loss: str = "clip", **kwargs) -> CrossAttentionAdaptor:
    torch.manual_seed(0)
    options = dict(width=WIDTH, embed_dim=EMBED, layers=1, heads=2, fusion_layers=1, dropout=0.0, loss=loss)
    return CrossAttentionAdaptor(IMAGE_DIM, TEXT_DIM, **{**options, **kwargs})


def toy_pairs(n: int, seed: int = 0) -> PairData:
    """Each pair shares a latent vector; image and text tokens are different noisy linear views of it."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(99)  # the same views for every split
    image_map = mixing.normal(size=(IMAGE_TOKENS, LATENT, IMAGE_DIM))
    text_map = mixing.normal(size=(TEXT_TOKENS, LATENT, TEXT_DIM))
    latent = rng.normal(size=(n, LATENT))
    image = np.einsum("nl,tld->ntd", latent, image_map) + 0.3 * rng.normal(size=(n, IMAGE_TOKENS, IMAGE_DIM))
    text = np.einsum("nl,tld->ntd", latent, text_map) + 0.3 * rng.normal(size=(n, TEXT_TOKENS, TEXT_DIM))
    lengths = rng.integers(3, TEXT_TOKENS + 1, size=n)
    mask = np.arange(TEXT_TOKENS)[None, :] < lengths[:, None]
    text[~mask] = 0.0
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return PairData(as_tensor(image), as_tensor(text), torch.as_tensor(mask), torch.arange(n))


def test_shapes_and_unit_norm():
    model = tiny_model().eval()
    pairs = toy_pairs(7)
    image = model.encode_image(pairs.image_tokens)
    text = model.encode_text(pairs.text_tokens, pairs.text_mask)
    assert image.shape == (7, EMBED) and text.shape == (7, EMBED)
    assert model.image_features(pairs.image_tokens).shape == (7, WIDTH)
    assert torch.allclose(image.norm(dim=1), torch.ones(7), atol=1e-5)
    assert torch.allclose(text.norm(dim=1), torch.ones(7), atol=1e-5)


def test_each_modality_encodes_alone_and_ignores_padding():
    """An image embedding does not depend on its batch; a text embedding does not depend on its padding."""
    model = tiny_model().eval()
    pairs = toy_pairs(6)
    with torch.no_grad():
        together = model.encode_image(pairs.image_tokens)
        alone = torch.cat([model.encode_image(pairs.image_tokens[i : i + 1]) for i in range(6)])
        assert torch.allclose(together, alone, atol=1e-5)
        noisy = pairs.text_tokens.clone()
        noisy[~pairs.text_mask] = 100.0
        assert torch.allclose(
            model.encode_text(pairs.text_tokens, pairs.text_mask), model.encode_text(noisy, pairs.text_mask), atol=1e-5
        )
        unmasked = model.encode_text(noisy, torch.ones_like(pairs.text_mask))
        assert not torch.allclose(unmasked, model.encode_text(noisy, pairs.text_mask), atol=1e-3)


def textbook_clip(image, text, scale):
    """CLIP's symmetric cross-entropy with one positive per row (Radford et al. 2021)."""
    logits, targets = scale * image @ text.T, torch.arange(len(image))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def textbook_siglip(image, text, scale, bias):
    """SigLIP's sigmoid loss with +1 on the diagonal (Zhai et al. 2023)."""
    signs = 2 * torch.eye(len(image)) - 1
    return -F.logsigmoid(signs * (scale * image @ text.T + bias)).sum() / len(image)


def test_contrastive_loss_matches_textbook_losses_on_distinct_texts():
    image = F.normalize(torch.randn(5, EMBED), dim=1)
    text = F.normalize(torch.randn(5, EMBED), dim=1)
    distinct = torch.eye(5, dtype=torch.bool)
    clip, sig = tiny_model("clip"), tiny_model("siglip")
    assert torch.isclose(
        clip.contrastive_loss(image, text, distinct), textbook_clip(image, text, clip.scale()), atol=1e-5
    )
    assert torch.isclose(
        sig.contrastive_loss(image, text, distinct),
        textbook_siglip(image, text, sig.scale(), sig.logit_bias),
        atol=1e-5,
    )
    assert (
        abs(clip.scale().item() - 1 / 0.07) < 1e-3
        and abs(sig.scale().item() - 10.0) < 1e-4
        and sig.logit_bias.item() == -10.0
    )


def test_repeated_text_is_a_positive_not_a_negative():
    """Images 0 and 1 share one text: matching both to it costs less once the pair is marked the same."""
    sig = tiny_model("siglip")
    with torch.no_grad():
        sig.logit_bias.fill_(-5.0)
    text = torch.nn.functional.normalize(torch.randn(4, EMBED), dim=1)
    text[1] = text[0]
    image = text.clone()
    distinct = torch.eye(4, dtype=torch.bool)
    same = distinct.clone()
    same[0, 1] = same[1, 0] = True
    assert sig.contrastive_loss(image, text, same) < sig.contrastive_loss(image, text, distinct) - 1.0


def test_logit_scale_is_clamped_at_100():
    model = tiny_model("clip")
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scale().item() == pytest.approx(100.0)


def test_itm_branch_trains_only_when_weighted():
    pairs = toy_pairs(8)
    for weight, expect_grad in ((1.0, True), (0.0, False)):
        model = tiny_model()
        model.pretraining_loss(
            pairs.image_tokens, pairs.text_tokens, pairs.text_mask, pairs.text_index, itm_weight=weight
        ).backward()
        grad = model.itm_head.weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == expect_grad


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_pretraining_lowers_loss_and_retrieval_beats_chance(loss):
    train, val, test = toy_pairs(96, seed=1), toy_pairs(24, seed=2), toy_pairs(32, seed=3)
    model = tiny_model(loss)
    before = adaptor_retrieval(model, test)
    result = pretrain_adaptor(
        model,
        train,
        val,
        OptimConfig(lr=3e-3, weight_decay=0.0, epochs=25, batch_size=32, patience=25, min_epochs=1),
        itm_weight=0.5,
        seed=0,
    )
    after = adaptor_retrieval(model, test)
    assert result.train_loss[-1] < 0.8 * result.train_loss[0]
    assert after["image_to_text"]["R@1"] > 3 / 32  # chance is 1/32
    assert after["text_to_image"]["R@5"] > 0.4  # chance is 5/32
    assert after["mean_recall"] > before["mean_recall"]


def test_pretraining_can_stop_early_on_validation_loss():
    """optim.early_stopping: loss scores epochs by minus the validation pairs' pre-training loss, not by recall."""
    train, val = toy_pairs(64, seed=1), toy_pairs(24, seed=2)
    result = pretrain_adaptor(
        tiny_model(),
        train,
        val,
        OptimConfig(lr=3e-3, epochs=6, batch_size=32, min_epochs=1, early_stopping="loss"),
        seed=0,
    )
    assert all(score < 0 for score in result.val_score) and result.best_val_score == max(result.val_score)


def test_retrieval_metrics_with_repeated_texts():
    """Two images share text 0: image->text has 2 candidates; the text query counts a hit for either image."""
    image = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    text = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])  # text 2 has no image here: neither query nor candidate
    metrics = retrieval_metrics(image, text, np.array([0, 0, 1]), ks=(1,))
    assert metrics["n_texts"] == 2
    assert metrics["image_to_text"]["R@1"] == 1.0 and metrics["text_to_image"]["R@1"] == 1.0
    wrong = retrieval_metrics(image, text, np.array([1, 1, 0]), ks=(1,))
    assert wrong["image_to_text"]["R@1"] == 0.0 and wrong["text_to_image"]["R@1"] == 0.0


def test_checkpoint_holds_no_per_row_tensor(tmp_path):
    n_rows = 37  # not equal to any model dimension
    pairs = toy_pairs(n_rows)
    model = tiny_model()
    pretrain_adaptor(model, pairs, None, OptimConfig(lr=1e-3, epochs=1, batch_size=16), seed=0)
    save_checkpoint(tmp_path, {"xattn_adaptor": (model_state(model), {})}, {})
    tensors = load_file(str(tmp_path / "checkpoint.safetensors"))
    assert any(key.startswith("xattn_adaptor/image_tower") for key in tensors)
    assert all(n_rows not in value.shape for value in tensors.values())


def test_fraction_rows_are_patient_level_and_nested():
    patients = np.repeat([f"p{i}" for i in range(50)], 3)
    train_rows = np.arange(30, 150)  # a train split that does not start at row 0
    chosen = {f: fraction_rows(train_rows, patients, f, seed=4) for f in (0.01, 0.1, 1.0)}
    assert set(chosen[0.01]) <= set(chosen[0.1]) <= set(chosen[1.0]) == set(train_rows)
    for rows in chosen.values():  # a patient is in a subset with all of its rows or not at all
        assert set(np.flatnonzero(np.isin(patients, patients[rows]))) == set(rows)
    assert len(chosen[0.01]) == 3 and len(chosen[0.1]) == 12


def _table(**columns) -> ImageTable:
    frame = pd.DataFrame({"image_path": ["a", "b", "c"], "patient_id": ["1", "2", "3"], **columns})
    return ImageTable(frame, ["Effusion", "Cardiomegaly"])


def test_pair_texts_prefer_reports_and_fall_back_to_label_sentences():
    labels = {"Effusion": [1.0, 0.0, np.nan], "Cardiomegaly": [0.0, 0.0, np.nan]}
    sentences = label_sentences(_table(**labels))
    assert sentences[0].startswith("Pleural effusion.") and "No cardiomegaly." in sentences[0]
    assert sentences[2] == "Chest radiograph."  # every label masked
    texts, source = pair_texts(_table(**labels, report=["Big heart.", None, ""]))
    assert source == "report" and texts == ["Big heart.", sentences[1], sentences[2]]
    assert pair_texts(_table(**labels)) == (sentences, "label_sentence")


class WordBackbone(Backbone):
    """Text-only fake: one token per word, a hash-derived vector per word."""

    spec = "words"
    image_dim = 4
    text_dim = 3

    def __init__(self) -> None:
        super().__init__()
        self.texts_encoded = 0

    def preprocess(self, image):
        raise NotImplementedError

    def encode_images(self, pixels, tokens=False):
        raise NotImplementedError

    def encode_texts(self, texts, tokens=False) -> Encoded:
        self.texts_encoded += len(texts)
        words = [t.split() for t in texts]
        hidden = torch.zeros(len(texts), max(len(w) for w in words), self.text_dim)
        for row, row_words in enumerate(words):
            for col, word in enumerate(row_words):
                hidden[row, col] = (
                    torch.tensor(list(hashlib.sha256(word.encode()).digest()[: self.text_dim]), dtype=torch.float32)
                    + 1
                )
        return Encoded(hidden.mean(1), hidden if tokens else None)

    def fingerprint_parts(self) -> dict:
        return {"family": "words"}


def test_text_token_cache_pads_masks_and_computes_only_missing(tmp_path):
    store, backbone = EmbeddingStore(tmp_path / "store"), WordBackbone()
    tokens, mask = text_token_embeddings(["no finding", "small left effusion here"], backbone, store, max_tokens=3)
    assert tokens.shape == (2, 3, 3) and mask.tolist() == [[True, True, False], [True, True, True]]
    assert (tokens[0, 2] == 0).all() and (tokens[1] != 0).all()  # padded / truncated to 3 tokens
    again, mask_again = text_token_embeddings(
        ["small left effusion here", "heart", "no finding"], backbone, store, max_tokens=3
    )
    assert backbone.texts_encoded == 3  # only "heart" was new
    assert (
        np.array_equal(again[0], tokens[1])
        and np.array_equal(again[2], tokens[0])
        and mask_again[1].tolist() == [True, False, False]
    )
    with pytest.raises(StoreError, match="padded to 3"):
        text_token_embeddings(["heart"], backbone, store, max_tokens=4)


class TinyAlignedBackbone(WordBackbone):
    """Aligned fake: 16x16 images, four 8x8 patches projected to 3-d tokens; texts as in WordBackbone."""

    spec = "tiny-aligned"
    aligned = True
    image_dim = 3

    def __init__(self) -> None:
        super().__init__()
        self.projection = torch.randn(3 * 64, self.image_dim, generator=torch.Generator().manual_seed(5))

    def preprocess(self, image):
        array = np.asarray(image.convert("RGB").resize((16, 16)), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def encode_images(self, pixels, tokens=False) -> Encoded:
        patches = pixels.unfold(2, 8, 8).unfold(3, 8, 8).permute(0, 2, 3, 1, 4, 5).reshape(len(pixels), 4, -1)
        token_vectors = patches @ self.projection
        return Encoded(token_vectors.mean(1), token_vectors if tokens else None)

    def fingerprint_parts(self) -> dict:
        return {"family": "tiny-aligned"}


def test_experiment_on_an_aligned_fake_backbone_reports_frozen_retrieval(tmp_path):
    from retune.config import DataConfig
    from retune.data.phantoms import write_phantom_dataset
    from retune.experiments.adaptor import run_adaptor_experiment

    csv = write_phantom_dataset(tmp_path / "data", n=40, size=32)
    optim = OptimConfig(lr=1e-3, epochs=2, batch_size=16, patience=2, min_epochs=1)
    config = AdaptorExperimentConfig(
        store=tmp_path / "store",
        data=DataConfig(csv=csv),
        layers=1,
        heads=2,
        width=8,
        embed_dim=4,
        optim=optim,
        n_bootstrap=0,
        label_fractions=[0.5, 1.0],
    )
    metrics = run_adaptor_experiment(config, tmp_path / "run", backbone=TinyAlignedBackbone())
    frozen = metrics["retrieval"]["frozen"]
    assert set(frozen["image_to_text"]) == {"R@1", "R@5", "R@10"}
    assert metrics["note"] == "" and list(metrics["label_fractions"]) == ["0.5", "1.0"]
    assert (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_config_rejects_bad_width_and_fractions():
    assert AdaptorExperimentConfig().label_fractions == [0.01, 0.1, 1.0]
    with pytest.raises(ValueError, match="divisible"):
        AdaptorExperimentConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="fractions"):
        AdaptorExperimentConfig(label_fractions=[0.0, 1.0])
