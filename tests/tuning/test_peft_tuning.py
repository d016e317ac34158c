"""Encoder tuning under the RE-tune head: peft adapters, partial freezing, the prefix cache, and what a run reports.

Tiny random open_clip / HF models are written to tmp dirs and loaded through ``create_backbone``; the default
backbone runs on a few small phantoms.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from tiny_models import tiny_hf_clip, tiny_hf_pair, tiny_open_clip

from retune.backbones.registry import create_backbone
from retune.config import PeftExperimentConfig, ReTuneConfig
from retune.data.phantoms import write_phantom_dataset
from retune.data.readers import read_table
from retune.errors import ConfigError
from retune.experiments.peft import compare_prefix_caching, run_peft_experiment
from retune.methods.retune import ReTuneModel
from retune.prompts import build_prompts
from retune.store import EmbeddingStore
from retune.store.prefix import prefix_activations
from retune.tuning.adapters import apply_tuning
from retune.tuning.model import TunedReTune, parameter_report, trainable_encoder_parameters
from retune.tuning.split import image_features_fn, image_split, prompt_features_fn
from retune.tuning.towers import resolve_freeze_blocks, tower_blocks, tower_of

CLASSES = ["Effusion", "Mass"]
SMALL_HEAD = ReTuneConfig(prompts="template", adaptor={"shared_dim": 8, "dropout": 0.0})


def small_peft_config(tmp_path: Path, csv: Path, **options) -> PeftExperimentConfig:
    """A PEFT experiment on the phantom CSV small enough for a unit test; ``options`` override the defaults."""
    settings = {
        "store": tmp_path / "store", "data": {"csv": csv}, "epochs": 2, "batch_size": 8, "retune": SMALL_HEAD,
        "device": "cpu", "n_bootstrap": 0,
    }
    return PeftExperimentConfig(**{**settings, **options})


@pytest.fixture(autouse=True)
def quiet_machine(tmp_path, monkeypatch):
    """An empty offline HF cache so nothing is fetched."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


BUILDERS = {"open_clip": tiny_open_clip, "hf_clip": tiny_hf_clip, "hf_pair": tiny_hf_pair}


def tiny_backbone(kind: str, tmp_path: Path):
    return create_backbone(BUILDERS[kind](tmp_path / kind), device="cpu")


def tuned_model(backbone, towers: list[str]) -> TunedReTune:
    """RE-tune head over the backbone's current (tuned) towers, as ``experiments.peft.tune`` builds it."""
    torch.manual_seed(0)
    head = ReTuneModel(backbone.image_dim, backbone.text_dim, SMALL_HEAD)
    prompts = build_prompts("template", CLASSES)
    if "text" in towers:
        prompt_features = prompt_features_fn(backbone, prompts)
    else:
        head.add_prompts(
            *(
                backbone.encode_texts([p.positive[0] for p in prompts.values()]).pooled.numpy(),
                backbone.encode_texts([p.negative[0] for p in prompts.values()]).pooled.numpy(),
            )
        )
        prompt_features = None
    model = TunedReTune(
        head,
        image_features_fn(backbone, 0, inputs_are_prefix=False),
        prompt_features,
        trainable_encoder_parameters(backbone),
    )
    model.freeze_prompts()
    return model


def random_pixels(backbone, n: int = 4) -> torch.Tensor:
    size = 224 if backbone.spec == "default" else 32
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def one_step(model: TunedReTune, pixels: torch.Tensor) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])[: len(pixels)]
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(pixels), labels)
    loss.backward()
    optimizer.step()


def snapshot(backbone) -> dict[str, torch.Tensor]:
    return {f"{i}.{n}": p.detach().clone() for i, m in enumerate(backbone.modules) for n, p in m.named_parameters()}


@pytest.fixture(scope="module")
def default_backbone():
    return create_backbone("default", device="cpu")


@pytest.fixture(scope="module")
def phantom_csv(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("phantoms"), n=24, seed=5, size=64)


# ---------------------------------------------------------------- LoRA


@pytest.mark.parametrize("kind", ["open_clip", "hf_clip", "hf_pair"])
def test_lora_adapts_only_the_image_tower_and_a_step_moves_only_adapters_and_head(kind, tmp_path):
    backbone = tiny_backbone(kind, tmp_path)
    apply_tuning(backbone, "image", "lora", rank=2, alpha=4)
    image, text = tower_of(backbone, "image"), tower_of(backbone, "text")
    assert any("lora_A" in name for name, _ in image.named_parameters())
    assert not any("lora_" in name for name, _ in text.named_parameters())
    encoder_trainable = trainable_encoder_parameters(backbone)
    assert encoder_trainable and all("lora_A" in n or "lora_B" in n for n in encoder_trainable)

    model = tuned_model(backbone, ["image"])
    report = parameter_report(backbone, model)
    head_count = sum(p.numel() for p in model.head.parameters() if p.requires_grad)
    assert report["trainable_parameters"] == head_count + sum(p.numel() for p in encoder_trainable.values())
    assert 0 < report["trainable_percent"] < 100

    before = snapshot(backbone)
    one_step(model, random_pixels(backbone))
    after = snapshot(backbone)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all("lora_" in name for name in changed)
    assert any("lora_B" in name for name in changed)  # B starts at zero: the adapter now changes the output


@pytest.mark.parametrize("kind", ["open_clip", "hf_clip"])
def test_lora_on_both_towers_of_one_model_trains_both(kind, tmp_path):
    backbone = tiny_backbone(kind, tmp_path)
    assert apply_tuning(backbone, ["image", "text"], "lora", rank=2) == {"image": 0, "text": 0}
    model = tuned_model(backbone, ["image", "text"])
    before = snapshot(backbone)
    one_step(model, random_pixels(backbone))
    changed = [name for name, value in snapshot(backbone).items() if not torch.equal(before[name], value)]
    image, text = tower_of(backbone, "image"), tower_of(backbone, "text")
    for tower in (image, text):
        assert any(tower.owns(name.partition(".")[2]) and "lora_B" in name for name in changed), tower.name
    assert all("lora_" in name for name in changed)


def test_lora_on_the_default_image_tower_is_a_small_fraction(default_backbone):
    backbone = create_backbone("default", device="cpu")
    apply_tuning(backbone, "image", "lora", rank=4, alpha=8)
    model = tuned_model(backbone, ["image"])
    report = parameter_report(backbone, model)
    assert report["trainable_percent"] < 3.0
    names = trainable_encoder_parameters(backbone)
    assert any(".conv_pw.lora_A" in n for n in names)  # LoRA on timm's pointwise Conv2d
    # depthwise convs and the unused classifier are skipped
    assert not any("conv_dw" in n or "classifier" in n for n in names)
    pixels = random_pixels(backbone, 2)
    with torch.no_grad():  # LoRA starts as the identity: same features as the frozen encoder
        torch.testing.assert_close(
            model.image_features(pixels), default_backbone.encode_images(pixels).pooled, atol=1e-4, rtol=1e-4
        )


def test_lora_reaches_open_clip_fused_attention_and_starts_as_the_identity(tmp_path):
    """nn.MultiheadAttention (q/k/v in one in_proj_weight) gets LoRA through peft; IA3 leaves it alone; a step moves
    its adapter."""
    reference = tiny_backbone("open_clip", tmp_path)
    backbone = create_backbone(reference.spec, device="cpu")
    apply_tuning(backbone, "image", "lora", rank=2, target_modules=[r"\.attn$"])
    adapted = {n.rsplit(".lora_", 1)[0] for n in trainable_encoder_parameters(backbone)}
    attention = {f"model.visual.transformer.resblocks.{i}.attn" for i in range(2)}
    # peft adapts in_proj (q/k/v) and out_proj
    assert adapted == attention | {f"{name}.base_layer.out_proj" for name in attention}
    pixels = random_pixels(backbone)
    with torch.no_grad():
        torch.testing.assert_close(
            backbone.encode_images(pixels).pooled, reference.encode_images(pixels).pooled, atol=1e-5, rtol=1e-5
        )
    model = tuned_model(backbone, ["image"])
    before = snapshot(backbone)
    one_step(model, pixels)
    changed = {name for name, value in snapshot(backbone).items() if not torch.equal(before[name], value)}
    assert any(".attn.lora_B" in name for name in changed) and all("lora_" in name for name in changed)
    ia3 = create_backbone(reference.spec, device="cpu")
    apply_tuning(ia3, "image", "ia3")
    assert not any(".attn." in n for n in trainable_encoder_parameters(ia3))


def test_target_modules_regex_restricts_lora(tmp_path):
    backbone = tiny_backbone("open_clip", tmp_path)
    apply_tuning(backbone, "image", "lora", rank=2, target_modules=[r"c_fc$"])
    adapted = {n.rsplit(".lora_", 1)[0] for n in trainable_encoder_parameters(backbone)}
    assert adapted and all(name.endswith("c_fc") for name in adapted)
    with pytest.raises(ConfigError, match="no module to adapt with lora"):
        apply_tuning(tiny_backbone("hf_clip", tmp_path), "image", "lora", target_modules=["no_such_layer"])


# ---------------------------------------------------------------- IA3, prefix


def test_ia3_on_the_bert_text_tower_trains_scaling_vectors(tmp_path):
    backbone = tiny_backbone("hf_pair", tmp_path)
    apply_tuning(backbone, "text", "ia3")
    encoder_trainable = trainable_encoder_parameters(backbone)
    assert encoder_trainable and all(n.startswith("text_model.") and "ia3_l" in n for n in encoder_trainable)
    model = tuned_model(backbone, ["text"])
    prompts_before = model.head.positive.clone()
    before = snapshot(backbone)
    one_step(model, random_pixels(backbone))
    after = snapshot(backbone)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all("ia3_l" in name for name in changed)
    model.freeze_prompts()
    assert not torch.allclose(model.head.positive, prompts_before)  # the text tower moved the prompt embeddings


def test_prefix_tuning_on_a_transformers_text_tower(tmp_path):
    backbone = tiny_backbone("hf_pair", tmp_path)
    apply_tuning(backbone, "text", "prefix", num_virtual_tokens=3)
    encoder_trainable = trainable_encoder_parameters(backbone)
    assert encoder_trainable and all("prompt_encoder" in n for n in encoder_trainable)
    model = tuned_model(backbone, ["text"])
    one_step(model, random_pixels(backbone))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder_trainable.values())


@pytest.mark.parametrize(
    ("kind", "tower", "message"),
    [
        ("hf_pair", "image", "does not apply to the image tower"),
        ("open_clip", "text", "use lora or ia3"),
        ("hf_clip", "text", "use lora or ia3"),
    ],
)
def test_prefix_where_it_cannot_apply_raises_config_error(kind, tower, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        apply_tuning(tiny_backbone(kind, tmp_path), tower, "prefix")


# ---------------------------------------------------------------- partial freezing


@pytest.mark.parametrize("kind", ["open_clip", "hf_clip", "hf_pair"])
def test_visual_prompt_tuning_trains_only_the_prompt_tokens(kind, tmp_path):
    """method prompt: n tokens x width trainable on the image tower, they change the features, a step moves only them
    and the head."""
    reference = tiny_backbone(kind, tmp_path)
    backbone = create_backbone(reference.spec, device="cpu")
    assert apply_tuning(backbone, "image", "prompt", num_virtual_tokens=3) == {"image": 0}
    encoder_trainable = trainable_encoder_parameters(backbone)
    assert len(encoder_trainable) == 1 and next(iter(encoder_trainable)).endswith("visual_prompts.tokens")
    assert next(iter(encoder_trainable.values())).shape == (3, 32)
    pixels = random_pixels(backbone)
    with torch.no_grad():
        assert not torch.allclose(
            backbone.encode_images(pixels).pooled, reference.encode_images(pixels).pooled, atol=1e-6
        )
    model = tuned_model(backbone, ["image"])
    before = snapshot(backbone)
    one_step(model, pixels)
    changed = {name for name, value in snapshot(backbone).items() if not torch.equal(before[name], value)}
    assert changed and all(name.endswith("visual_prompts.tokens") for name in changed)


def test_visual_prompt_tuning_twice_on_one_backbone_is_refused(tmp_path):
    backbone = tiny_backbone("hf_pair", tmp_path)
    apply_tuning(backbone, "image", "prompt", num_virtual_tokens=2)
    with pytest.raises(ConfigError, match="already has visual prompts"):
        apply_tuning(backbone, "image", "prompt", num_virtual_tokens=2)


def test_peft_run_can_stop_early_on_validation_loss(phantom_csv, tmp_path):
    config = small_peft_config(
        tmp_path,
        phantom_csv,
        backbone=tiny_hf_clip(tmp_path / "hf"),
        method="prompt",
        retune=SMALL_HEAD.model_copy(
            update={"optim": SMALL_HEAD.optim.model_copy(update={"early_stopping": "loss", "min_epochs": 1})}
        ),
    )
    metrics = run_peft_experiment(config, tmp_path / "run")
    assert metrics["training"]["best_val_score"] < 0  # minus the validation loss


def test_visual_prompt_tuning_refuses_convnets_text_towers_and_frozen_blocks(default_backbone, tmp_path):
    with pytest.raises(ConfigError, match="use lora or ia3"):
        apply_tuning(create_backbone("default", device="cpu"), "image", "prompt")
    with pytest.raises(ConfigError, match="for the text tower use prefix"):
        apply_tuning(tiny_backbone("hf_clip", tmp_path), ["image", "text"], "prompt")
    with pytest.raises(ConfigError, match="freeze_blocks"):
        apply_tuning(tiny_backbone("open_clip", tmp_path / "b"), "image", "prompt", freeze_blocks=1)


def test_freeze_blocks_int_and_fraction():
    assert resolve_freeze_blocks(5, 7, "image") == 5
    assert resolve_freeze_blocks(0.5, 12, "text") == 6
    with pytest.raises(ConfigError, match="has 7 blocks"):
        resolve_freeze_blocks(8, 7, "image")


def test_freeze_k_trains_only_the_top_of_the_tower(tmp_path):
    backbone = tiny_backbone("open_clip", tmp_path)
    image = tower_of(backbone, "image")
    container, blocks = tower_blocks(image)
    assert container == "visual.transformer.resblocks" and len(blocks) == 2
    assert apply_tuning(backbone, "image", "freeze", freeze_blocks=0.5) == {"image": 1}
    trainable = {n for n, p in image.named_parameters() if p.requires_grad}
    assert any(n.startswith(f"{container}.1.") for n in trainable)
    assert not any(
        n.startswith(f"{container}.0.") or "embedding" in n or n.startswith("visual.conv1") for n in trainable
    )
    assert not any(p.requires_grad for _, p in tower_of(backbone, "text").named_parameters())


def test_prefix_cache_computes_once(default_backbone, phantom_csv, tmp_path):
    table = read_table(phantom_csv)
    store = EmbeddingStore(tmp_path / "store")
    first = prefix_activations(table, default_backbone, 5, store, image_split(default_backbone, 5).prefix)
    again = prefix_activations(table, default_backbone, 5, store, image_split(default_backbone, 5).prefix)
    assert (first.n_computed, again.n_computed) == (len(table), 0)
    assert tuple(first.activations.shape) == (len(table), 112, 14, 14)  # stage-5 output at 224 px
    torch.testing.assert_close(first.activations, again.activations)
    # k is part of the key
    assert prefix_activations(
        table, default_backbone, 3, store, image_split(default_backbone, 3).prefix
    ).n_computed == len(table)


@pytest.mark.slow  # seconds of training: make test and CI run it, make test-fast does not
def test_cached_and_uncached_freeze_k_train_the_same(phantom_csv, tmp_path):
    config = small_peft_config(
        tmp_path,
        phantom_csv,
        method="freeze",
        freeze_blocks=6,
    )
    result = compare_prefix_caching(config)
    assert result["frozen_blocks"] == 6 and result["prefix_cache"]["n_computed"] == 24
    np.testing.assert_allclose(result["cached_train_loss"], result["uncached_train_loss"], rtol=1e-3)
    assert result["max_test_score_difference"] < 1e-3
    assert result["cached_train_seconds"] > 0 and result["uncached_train_seconds"] > 0


@pytest.mark.parametrize("kind", ["open_clip", "hf_clip", "hf_pair"])
def test_cached_prefix_gives_the_same_features_as_the_full_tower(kind, tmp_path):
    """top(prefix(x)) equals the tower's own forward on every tiny transformer family; the stand-ins are removed
    afterwards."""
    backbone = tiny_backbone(kind, tmp_path)
    pixels = random_pixels(backbone)
    split = image_split(backbone, 1)
    before = list(tower_blocks(tower_of(backbone, "image"))[1])
    with torch.no_grad():
        torch.testing.assert_close(
            split.top(split.prefix(pixels)), backbone.encode_images(pixels).pooled, rtol=1e-4, atol=1e-5
        )
    assert list(tower_blocks(tower_of(backbone, "image"))[1]) == before


@pytest.mark.parametrize("kind", ["hf_clip", "hf_pair"])
def test_cached_and_uncached_freeze_k_train_the_same_on_hf_towers(kind, phantom_csv, tmp_path):
    spec = BUILDERS[kind](tmp_path / kind)
    config = small_peft_config(
        tmp_path,
        phantom_csv,
        backbone=spec,
        method="lora",
        rank=2,
        freeze_blocks=1,
    )
    result = compare_prefix_caching(config)
    assert result["frozen_blocks"] == 1 and result["prefix_cache"]["n_computed"] == 24
    np.testing.assert_allclose(result["cached_train_loss"], result["uncached_train_loss"], rtol=1e-4)
    assert result["max_test_score_difference"] < 1e-4


def test_run_reports_parameters_memory_and_saves_only_trainable_tensors(phantom_csv, tmp_path):
    config = small_peft_config(
        tmp_path,
        phantom_csv,
        method="lora",
        rank=2,
        epochs=1,
        freeze_blocks=6,
    )
    metrics = run_peft_experiment(config, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (
        saved["method"] == "peft-lora" and saved["split"] == "test" and "per_class" in saved and "mean_auroc" in saved
    )
    assert 0 < saved["trainable_percent"] < 3 and saved["trainable_parameters"] < saved["total_parameters"]
    assert "peak_memory_source" in saved
    assert saved["tuning"]["frozen_blocks"] == {"image": 6} and metrics["tuning"]["prefix_cache"]["n_computed"] == 24
    tensors = load_file(str(tmp_path / "run" / "checkpoint.safetensors"))
    assert tensors and all(
        k.startswith("peft-lora/head.") or (k.startswith("peft-lora/encoder.") and "lora_" in k) for k in tensors
    )
    assert any("lora_B" in k for k in tensors)
    n_images = 24
    assert not any(value.ndim and value.shape[0] == n_images for value in tensors.values())  # nothing per image
    # bias trains for siglip only
    assert (
        sum(
            v.size
            for k, v in tensors.items()
            if k not in ("peft-lora/head.positive", "peft-lora/head.negative", "peft-lora/head.logit_bias")
        )
        == saved["trainable_parameters"]
    )


def test_open_clip_runs_end_to_end_with_the_frozen_block_cached(phantom_csv, tmp_path):
    spec = tiny_open_clip(tmp_path / "oc")
    settings = dict(
        backbone=spec,
        store=tmp_path / "store",
        data={"csv": phantom_csv},
        epochs=1,
        batch_size=8,
        retune=SMALL_HEAD,
        device="cpu",
        n_bootstrap=0,
    )
    freeze = PeftExperimentConfig(**settings, tower="image", method="freeze", freeze_blocks=1)
    metrics = run_peft_experiment(freeze, tmp_path / "freeze")  # cache_prefix unset: cached because the ViT splits
    assert metrics["tuning"]["frozen_blocks"] == {"image": 1} and metrics["tuning"]["prefix_cache"]["n_computed"] == 24
    assert metrics["tuning"]["prefix_cache"]["activation_shape"] == [17, 32]  # 16 patches + class token, width 32
    both = run_peft_experiment(
        PeftExperimentConfig(**settings, tower="both", method="lora", rank=2), tmp_path / "lora"
    )
    tensors = load_file(str(tmp_path / "lora" / "checkpoint.safetensors"))
    assert any(k.startswith("peft-lora/encoder.model__visual") for k in tensors) and any(
        k.startswith("peft-lora/encoder.model__transformer") for k in tensors
    )
    assert both["trainable_parameters"] < both["total_parameters"]


# ---------------------------------------------------------------- loading a tuned run back


@pytest.mark.parametrize("kind", [pytest.param("default", marks=pytest.mark.slow), "open_clip",
                                  pytest.param("hf_clip_prompt", marks=pytest.mark.slow)])
def test_a_peft_run_loads_back_for_evaluate_and_predict(kind, phantom_csv, tmp_path):
    """The loaded run gives the trained model's probabilities; evaluate_run reproduces its metrics; predict_images
    reports bad images."""
    from retune.experiments.inference import evaluate_run, predict_images
    from retune.experiments.peft import load_tuned_run, tune

    # LoRA above 6 frozen stages: the loaded run computes the prefix cache afresh in its own store
    if kind == "default":
        settings = dict(method="lora", rank=2, freeze_blocks=6)
    # LoRA on both towers of a ViT CLIP: the loaded run streams pixels through the tuned image tower
    elif kind == "open_clip":
        settings = dict(backbone=tiny_open_clip(tmp_path / "oc"), tower="both", method="lora", rank=2)
    else:  # visual prompt tokens on an HF CLIP image tower
        settings = dict(backbone=tiny_hf_clip(tmp_path / "hf"), method="prompt", num_virtual_tokens=4)
    config = small_peft_config(
        tmp_path,
        phantom_csv,
        epochs=1,
        **settings,
    )
    trained = run_peft_experiment(config, tmp_path / "run")
    table = read_table(phantom_csv)
    # same seed: the same model, and its test-split probabilities
    retrained = tune(config, table, EmbeddingStore(tmp_path / "store"))
    loaded = load_tuned_run(tmp_path / "run", store_dir=tmp_path / "fresh-store")
    scores, rows, errors = loaded.score(table.subset(retrained.splits["test"]))
    assert len(rows) == len(retrained.splits["test"]) and errors.empty
    np.testing.assert_allclose(scores, retrained.test_scores, rtol=1e-4, atol=1e-5)
    assert loaded.use_prefix_cache == (kind == "default")

    evaluated = evaluate_run(tmp_path / "run", phantom_csv, n_bootstrap=0)
    assert (
        evaluated["method"] == trained["method"]
        and evaluated["split"] == "test"
        and evaluated["n_images"] == trained["n_images"]
    )
    for name, record in trained["per_class"].items():
        assert evaluated["per_class"][name]["auroc"] == pytest.approx(record["auroc"], abs=1e-6, nan_ok=True)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    frame, errors = predict_images(tmp_path / "run", [*table.paths[:3], str(broken)])
    assert list(frame.columns) == ["image", *trained["per_class"]] and len(frame) == 3
    assert ((frame.iloc[:, 1:] >= 0) & (frame.iloc[:, 1:] <= 1)).all().all()
    assert list(errors["path"]) == [str(broken.resolve())]
    only_broken, errors = predict_images(tmp_path / "run", [str(broken)])
    assert only_broken.empty and len(errors) == 1


@pytest.mark.slow  # seconds of work: make test and CI run it, make test-fast does not
def test_pixels_beyond_the_memory_budget_are_decoded_per_batch_with_the_same_result(
    phantom_csv, tmp_path, monkeypatch
):
    """A zero budget streams pixels (PixelsOnAccess) and trains exactly as the in-memory path; unreadable rows are
    dropped."""
    import retune.experiments.peft as peft_experiment
    from retune.data.pixels import PixelsOnAccess, pixel_inputs

    backbone = tiny_backbone("hf_clip", tmp_path)
    paths = read_table(phantom_csv).paths[:5]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    held, held_rows = pixel_inputs([*paths, str(broken)], backbone)
    streamed, streamed_rows = pixel_inputs([*paths, str(broken)], backbone, memory_budget=0)
    assert isinstance(held, torch.Tensor) and isinstance(streamed, PixelsOnAccess)
    assert list(held_rows) == list(streamed_rows) == [0, 1, 2, 3, 4]
    torch.testing.assert_close(streamed[torch.tensor([4, 1])], held[[4, 1]])

    config = small_peft_config(
        tmp_path,
        phantom_csv,
        backbone=backbone.spec,
        method="lora",
        rank=2,
    )
    in_memory = run_peft_experiment(config, tmp_path / "held")
    monkeypatch.setattr(
        peft_experiment, "pixel_inputs", lambda paths, backbone: pixel_inputs(paths, backbone, memory_budget=0)
    )
    streaming = run_peft_experiment(config, tmp_path / "streamed")
    np.testing.assert_allclose(streaming["training"]["train_loss"], in_memory["training"]["train_loss"], rtol=1e-5)
    assert streaming["mean_auroc"] == pytest.approx(in_memory["mean_auroc"], abs=1e-6, nan_ok=True)


def test_tuning_uses_the_towers_a_backbone_declares(default_backbone, monkeypatch):
    """tower_of asks Backbone.tower: a family declaring a narrower tower gets exactly it; declaring none is refused."""
    image = default_backbone.image_model
    monkeypatch.setattr(default_backbone, "tower", lambda name: (image, lambda n: n.startswith("blocks")))
    names = [name for name, _ in tower_of(default_backbone, "image").named_parameters()]
    assert names and all(name.startswith("blocks") for name in names)
    assert len(names) < len(list(image.named_parameters()))
    monkeypatch.setattr(default_backbone, "tower", lambda name: None)
    with pytest.raises(ConfigError, match="declares no text tower"):
        tower_of(default_backbone, "text")


def test_every_configurable_tuning_method_has_a_registered_tuner():
    """The config's method names and the tuner registry agree, so `method:` never names a missing tuner."""
    from typing import get_args

    from retune.config import PeftMethod
    from retune.tuning.adapters import TUNERS

    assert set(get_args(PeftMethod)) == set(TUNERS)
