"""Each objective's loss on hand-made tensors: masked = CLIP at ratio 0, FILIP = CLIP with one token per side,
captioning learns a toy pair set, unimodal terms reach the towers, token dropping keeps only real tokens."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from retune.config import OptimConfig
from retune.methods.xattn_adaptor import CrossAttentionAdaptor, PairData
from retune.objectives import ObjectiveContext, ObjectiveMix, PairBatch, TokenPairs, parse_mix, pretrain_mix
from retune.objectives.base import drop_tokens
from retune.objectives.caption import CaptionObjective, Vocabulary
from retune.objectives.clip import ClipObjective
from retune.objectives.filip import late_interaction
from retune.objectives.masked import MaskedContrastiveObjective
from retune.objectives.siglip import SiglipObjective
from retune.objectives.unimodal import UnimodalObjective, hide_tokens

IMAGE_DIM, TEXT_DIM, WIDTH, EMBED, HEADS = 6, 5, 16, 8, 2


def adaptor() -> CrossAttentionAdaptor:
    torch.manual_seed(0)
    return CrossAttentionAdaptor(IMAGE_DIM, TEXT_DIM, WIDTH, EMBED, layers=1, heads=HEADS, fusion_layers=0, dropout=0)


def context(texts: list[str] | None = None) -> ObjectiveContext:
    return ObjectiveContext(IMAGE_DIM, TEXT_DIM, WIDTH, EMBED, HEADS, texts or [], texts or [])


def batch(model: CrossAttentionAdaptor, n: int = 6, seed: int = 1) -> PairBatch:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, 7, dtype=torch.bool)
    mask[:, 4:] = torch.arange(3)[None, :] < torch.arange(n)[:, None] % 3  # rows of 4, 5 and 6 real tokens
    text = torch.randn(n, 7, TEXT_DIM, generator=generator) * mask[..., None]
    return PairBatch(model, torch.randn(n, 9, IMAGE_DIM, generator=generator), text, mask, torch.arange(n),
                     torch.arange(n))


def options(name: str, **fields):
    return parse_mix({name: fields})[name]


def test_masked_at_ratio_zero_is_clip_and_differs_when_tokens_drop():
    model = adaptor()
    clip = ClipObjective(options("clip"), context())
    plain = clip(batch(model))
    assert torch.isclose(MaskedContrastiveObjective(options("masked", ratio=0.0), context())(batch(model)), plain)
    torch.manual_seed(5)
    assert not torch.isclose(MaskedContrastiveObjective(options("masked", ratio=0.5), context())(batch(model)), plain)


def test_clip_and_siglip_match_textbook_formulas_on_distinct_pairs():
    model = adaptor()
    pairs = batch(model)
    image, text = pairs.full.image, pairs.full.text
    targets = torch.arange(len(image))
    logits = image @ text.T / 0.07
    textbook_clip = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    assert torch.isclose(ClipObjective(options("clip"), context())(pairs), textbook_clip, atol=1e-5)
    signs = 2 * torch.eye(len(image)) - 1
    textbook_siglip = -F.logsigmoid(signs * (10 * image @ text.T - 10)).sum() / len(image)
    assert torch.isclose(SiglipObjective(options("siglip"), context())(pairs), textbook_siglip, atol=1e-4)


def test_drop_tokens_keeps_a_share_of_real_tokens_only():
    tokens = torch.arange(2 * 6, dtype=torch.float32).reshape(2, 6, 1) + 1
    mask = torch.tensor([[True] * 6, [True, True, False, False, False, False]])
    tokens[1, 2:] = -100.0  # padding must never be kept
    kept, kept_mask = drop_tokens(tokens, mask, 0.5, torch.Generator().manual_seed(0))
    assert kept_mask.sum(1).tolist() == [3, 1]
    assert kept.shape[1] == 3 and (kept[kept_mask] > 0).all()
    assert set(kept[0, :, 0].tolist()) <= set(tokens[0, :, 0].tolist())
    images, image_mask = drop_tokens(torch.randn(3, 10, 2), None, 0.3)
    assert images.shape == (3, 7, 2) and image_mask is None


def test_filip_is_clip_with_one_token_per_side_and_ignores_padding():
    image = F.normalize(torch.randn(4, 1, 3), dim=-1)
    text = F.normalize(torch.randn(4, 1, 3), dim=-1)
    image_to_text, text_to_image = late_interaction(image, text, torch.ones(4, 1, dtype=torch.bool))
    cosine = image[:, 0] @ text[:, 0].T
    assert torch.allclose(image_to_text, cosine, atol=1e-6) and torch.allclose(text_to_image, cosine, atol=1e-6)
    padded = torch.cat([text, image[:, :1]], dim=1)  # a padded token equal to the image token would win every max
    valid = torch.tensor([[True, False]] * 4)
    again = late_interaction(image, padded, valid)
    assert torch.allclose(again[0], cosine, atol=1e-6) and torch.allclose(again[1], cosine, atol=1e-6)
    assert not torch.allclose(late_interaction(image, padded, torch.ones(4, 2, dtype=torch.bool))[0], cosine)


def test_vocabulary_round_trip_and_rare_words():
    vocabulary = Vocabulary.from_texts(["Small effusion.", "Small nodule.", "Big heart."], min_count=2)
    ids = vocabulary.encode("Small effusion.", max_words=4)
    assert len(ids) == 6 and vocabulary.decode(ids[1:]) == "small <unk>."


def test_captioning_loss_falls_and_generates_a_training_text():
    texts = ["left effusion.", "big heart.", "no finding.", "right nodule."]
    tokens = torch.randn(4, 5, IMAGE_DIM, generator=torch.Generator().manual_seed(2))
    pairs = PairData(tokens.repeat(4, 1, 1), torch.randn(4, 3, TEXT_DIM), torch.ones(4, 3, dtype=torch.bool),
                     torch.arange(4).repeat(4))
    model = ObjectiveMix(adaptor(), parse_mix({"caption": {"min_count": 1, "max_words": 4, "dropout": 0.0}}),
                         context(texts))
    result = pretrain_mix(model, TokenPairs(pairs, pairs.text_index), OptimConfig(lr=3e-3, epochs=40, batch_size=8))
    assert result.fit.train_loss[-1] < 0.2 * result.fit.train_loss[0]
    caption: CaptionObjective = model.objectives["caption"]
    assert caption.generate(model.adaptor, tokens) == texts


def test_unimodal_terms_reach_both_towers_and_use_text_only_rows():
    model = adaptor()
    objective = UnimodalObjective(options("unimodal"), context())
    pairs = batch(model)
    loss = objective(pairs)
    loss.backward()
    assert math.isfinite(loss.item())
    for tower in (model.image_tower, model.text_tower):
        assert tower.project[0].weight.grad.abs().sum() > 0
    torch.manual_seed(3)
    alone = objective.mlm_term(pairs, *objective.texts(pairs))
    pairs.text_only = (torch.randn(5, 4, TEXT_DIM), torch.ones(5, 4, dtype=torch.bool))
    tokens, mask = objective.texts(pairs)
    assert tokens.shape[0] == 6 + 5 and mask[6:, :4].all() and not mask[6:, 4:].any()
    torch.manual_seed(3)
    assert not torch.isclose(objective.mlm_term(pairs, tokens, mask), alone)


def test_hide_tokens_hides_real_tokens_only_and_at_least_one():
    mask = torch.tensor([[True, True, False], [True] * 3])
    for _ in range(5):
        hidden = hide_tokens(mask, 0.15)
        assert not (hidden & ~mask).any() and hidden.sum(1).tolist() == [1, 1]


@pytest.mark.parametrize("mix", [{"clip": 1.0, "filip": 1.0}, {"masked": {"ratio": 0.5}}, {"siglip": 1.0}])
def test_each_mix_trains_its_loss_down(mix):
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(48, 4, generator=generator)
    image = (latent @ torch.randn(4, 9 * IMAGE_DIM, generator=generator)).reshape(48, 9, IMAGE_DIM)
    text = (latent @ torch.randn(4, 3 * TEXT_DIM, generator=generator)).reshape(48, 3, TEXT_DIM)
    pairs = PairData(image, text, torch.ones(48, 3, dtype=torch.bool), torch.arange(48))
    model = ObjectiveMix(adaptor(), parse_mix(mix), context())
    result = pretrain_mix(model, TokenPairs(pairs, torch.arange(48)), OptimConfig(lr=3e-3, epochs=15, batch_size=16))
    assert result.fit.train_loss[-1] < 0.7 * result.fit.train_loss[0] and len(result.epoch_seconds) == 15
