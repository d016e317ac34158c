"""The real offline default backbone (EfficientNet-Lite0 + all-MiniLM-L6-v2) and phantom learnability on its
features."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from retune.backbones.registry import create_backbone, list_backbones
from retune.data.phantoms import PHANTOM_FINDINGS, write_phantom_dataset
from retune.data.readers import read_table
from retune.data.splits import patient_split
from retune.errors import ConfigError
from retune.store import EmbeddingStore, embed_table, image_embeddings


@pytest.fixture(scope="module")
def backbone():
    """The default backbone on CPU, loaded once for the module (~5 s)."""
    return create_backbone("default", device="cpu")


def test_pooled_and_token_image_embeddings(backbone):
    """Pooled image vectors are 1280-d and tokens are 7x7=49 patches of 1280, with pooled = mean of tokens."""
    pixels = torch.stack(
        [backbone.preprocess(Image.new("RGB", (224, 224), (value, value, value))) for value in (30, 200)]
    )
    encoded = backbone.encode_images(pixels, tokens=True)
    assert backbone.image_dim == 1280
    assert encoded.pooled.shape == (2, 1280)
    assert encoded.tokens.shape == (2, 49, 1280)
    torch.testing.assert_close(encoded.tokens.mean(dim=1), encoded.pooled, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(encoded.pooled).all()
    assert not torch.equal(encoded.pooled[0], encoded.pooled[1])
    assert backbone.encode_images(pixels).tokens is None


def test_text_embeddings_are_unit_norm(backbone):
    """Texts become 384-d unit vectors; related sentences are closer than unrelated ones."""
    texts = ["The heart is enlarged.", "Cardiomegaly is present.", "A recipe for chocolate cake."]
    pooled = backbone.encode_texts(texts).pooled
    assert backbone.text_dim == 384 and pooled.shape == (3, 384)
    torch.testing.assert_close(pooled.norm(dim=-1), torch.ones(3), rtol=0, atol=1e-5)
    assert float(pooled[0] @ pooled[1]) > float(pooled[0] @ pooled[2])


def test_fingerprint_stable_across_loads(backbone):
    """The fingerprint is 16 hex chars and identical for a second, independent load."""
    assert re.fullmatch(r"[0-9a-f]{16}", backbone.fingerprint)
    again = create_backbone("default", device="cpu")
    assert again.fingerprint == backbone.fingerprint
    assert again.describe()["parts"] == backbone.describe()["parts"]


def test_loading_prints_no_transformers_progress_bar(capfd):
    """transformers' per-tensor "Loading weights" bar is hidden while a backbone loads, and re-enabled afterwards."""
    from transformers.utils import logging as transformers_logging

    create_backbone("default", device="cpu")
    assert "Loading weights" not in capfd.readouterr().err
    assert transformers_logging.is_progress_bar_enabled()


def test_freeze_leaves_no_trainable_parameters(backbone):
    """After create_backbone (which freezes), no parameter requires grad and modules are in eval mode."""
    parameters = [p for module in backbone.modules for p in module.parameters()]
    assert len(parameters) > 100
    assert not any(p.requires_grad for p in parameters)
    assert not any(module.training for module in backbone.modules)


@pytest.mark.parametrize("mode, size", [("L", (64, 64)), ("RGB", (300, 200))])
def test_preprocess_gives_3x224x224(backbone, mode, size):
    """A 64x64 greyscale and a 300x200 RGB image both preprocess to a 3x224x224 float tensor in [-1, 1]."""
    rng = np.random.default_rng(0)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)
    tensor = backbone.preprocess(image)
    assert tensor.shape == (3, 224, 224) and tensor.dtype == torch.float32
    assert float(tensor.min()) >= -1.0 - 1e-5 and float(tensor.max()) <= 1.0 + 1e-5


def test_unknown_backbone_lists_valid_names():
    """An unknown backbone name is a ConfigError listing the valid names (default among them)."""
    with pytest.raises(ConfigError) as error:
        create_backbone("no-such-backbone", device="cpu")
    message = str(error.value)
    assert "no-such-backbone" in message
    for name, _ in list_backbones():
        assert name in message


@pytest.mark.slow  # seconds of training: make test and CI run it, make test-fast does not
def test_phantom_findings_are_learnable(backbone, tmp_path):
    """On 240 phantoms, per-finding logistic regression on default-backbone features reaches mean test AUROC > 0.65."""
    csv_path = write_phantom_dataset(tmp_path / "phantoms", n=240, seed=3)
    table = read_table(csv_path)
    store = EmbeddingStore(tmp_path / "store")
    summary = embed_table(table, backbone, store, workers=0, show_progress=False)
    assert summary.n_computed == 240 and len(summary.errors) == 0
    images, rows = image_embeddings(table, backbone.fingerprint, store)
    assert images.shape == (240, 1280) and list(rows) == list(range(240))
    labels = table.labels(list(PHANTOM_FINDINGS))
    splits = patient_split(table.patients, seed=0)
    train, test = np.concatenate([splits["train"], splits["val"]]), splits["test"]
    assert not set(table.patients[train]) & set(table.patients[test])
    mean, scale = images[train].mean(axis=0), images[train].std(axis=0) + 1e-6
    features = (images - mean) / scale
    aurocs = {}
    for column, finding in enumerate(PHANTOM_FINDINGS):
        y_train, y_test = labels[train, column], labels[test, column]
        if len(np.unique(y_train)) < 2 or len(np.unique(y_test)) < 2:
            continue
        model = LogisticRegression(C=0.1, max_iter=2000).fit(features[train], y_train)
        aurocs[finding] = roc_auc_score(y_test, model.decision_function(features[test]))
    assert len(aurocs) >= 4, aurocs
    assert float(np.mean(list(aurocs.values()))) > 0.65, aurocs
