"""Tuning the encoders under the RE-tune head: PEFT adapters (LoRA, IA3, prefix, visual prompts) and partial freezing.

MILE (MICCAI 2024) tunes medical encoders with PEFT; arXiv 2406.07450 freezes the first k blocks.
Both are expressed here on a backbone's towers (image, text): adapters are injected with ``peft``
by exact module name (so timm convnets and open_clip ViTs work, not only transformers models), the
first k blocks can be frozen, and for the image tower the frozen blocks' output is cached in the
store (kind ``prefix``) so training runs only the unfrozen top. Encoders always run in eval mode
(BatchNorm statistics and dropout fixed); only the head trains with dropout.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from retune.backbones.base import Backbone
from retune.data.pixels import pixel_shape
from retune.errors import ConfigError, unknown_name
from retune.tuning.towers import Tower, frozen_names, resolve_freeze_blocks, tower_blocks, tower_of

# ImageNet classifier, BERT pooler: not in the pooled features
UNUSED_OUTPUT_HEADS = re.compile(r"(^|\.)(classifier|pooler)(\.|$)")


def _is_adaptable(module: nn.Module, parent: nn.Module | None, method: str) -> bool:
    """Linear and ungrouped Conv2d layers; for LoRA also whole ``nn.MultiheadAttention`` modules (open_clip, CheXzero),
    whose q/k/v live in one fused ``in_proj_weight`` that peft's LoRA MultiheadAttention layer adapts."""
    # out_proj's weight is read directly by the parent, an adapter would be bypassed
    if isinstance(parent, nn.MultiheadAttention):
        return False
    # peft merges the adapter into the frozen weights around each forward (fp32 drift ~1e-8)
    if isinstance(module, nn.MultiheadAttention):
        return method == "lora" and module._qkv_same_embed_dim
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def adapter_targets(tower: Tower, patterns: list[str] | None, frozen: set[str], method: str = "lora") -> list[str]:
    """Full names of the modules to adapt (see ``_is_adaptable``): outside the frozen part, matching ``patterns``."""
    modules = dict(tower.root.named_modules())
    targets = []
    for name, module in tower.named_modules():
        parent = modules.get(name.rpartition(".")[0]) if "." in name else tower.root
        if (
            not _is_adaptable(module, parent, method)
            or UNUSED_OUTPUT_HEADS.search(name)
            or any(p.startswith(name + ".") for p in frozen)
        ):
            continue
        if patterns and not any(re.search(pattern, name) for pattern in patterns):
            continue
        targets.append(name)
    if not targets:
        raise ConfigError(
            f"{tower.name} tower: no module to adapt with {method}"
            + (f" matches target_modules {patterns}" if patterns else "")
        )
    return targets


def _prefix_tuning_slot(backbone: Backbone, tower: str) -> tuple[object, str]:
    """(owner, attribute) of the transformers text model that prefix tuning wraps, or ConfigError saying why not."""
    from transformers import PreTrainedModel

    if tower != "text":
        raise ConfigError(
            "prefix tuning prepends key/value tokens to a transformers text model's attention; it does not apply to "
            "the image tower"
        )
    slots = [(backbone, "text_model"), (getattr(getattr(backbone, "model", None), "text", None), "transformer")]
    for owner, attribute in slots:
        if isinstance(getattr(owner, attribute, None), PreTrainedModel):
            return owner, attribute
    raise ConfigError(
        "prefix tuning needs the text tower to be a transformers model (default, hf-pair, open_clip with an HF text "
        "tower); "
        f"backbone '{backbone.spec}' has another text tower: use lora or ia3"
    )


class VisualPrompts(nn.Module):
    """Visual prompt tuning (VPT-shallow, Jia et al. 2022): learnable tokens inserted after the first token (the class
    token of a ViT) before the tower's first block, so the patch tokens stay last, as RoPE ViTs expect. Class-token
    pooling reads the image as before; pooling over all tokens (mean, attention pool) also sees the prompts, as in
    VPT."""

    def __init__(self, n_tokens: int, width: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(n_tokens, width) * 0.02)

    def insert(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Forward pre-hook of block 0: (N, T, D) hidden states -> (N, T + n_tokens, D)."""
        hidden = args[0]
        prompts = self.tokens.to(dtype=hidden.dtype).expand(hidden.shape[0], -1, -1)
        return (torch.cat([hidden[:, :1], prompts, hidden[:, 1:]], dim=1), *args[1:]), kwargs


def _attach_visual_prompts(backbone: Backbone, n_tokens: int) -> None:
    """Give the image tower ``n_tokens`` trainable prompt tokens (a submodule next to its block container, hooked to
    block 0); refuses towers without (batch, tokens, width) blocks and towers that fail with extra tokens."""
    tower = tower_of(backbone, "image")
    container_name, blocks = tower_blocks(tower)
    parent_name = container_name.rpartition(".")[0]
    parent = dict(tower.root.named_modules())[parent_name] if parent_name else tower.root
    if hasattr(parent, "visual_prompts"):
        raise ConfigError(
            f"backbone '{backbone.spec}' already has visual prompts: load a fresh backbone to tune it again"
        )
    blank = torch.zeros(2, *pixel_shape(backbone))
    seen: list[torch.Size] = []
    probe = blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    try:
        pooled = backbone.encode_images(blank).pooled
    finally:
        probe.remove()
    if not seen or len(seen[0]) != 3 or seen[0][0] != 2:
        raise ConfigError(
            f"prompt tuning needs an image tower whose blocks take (batch, tokens, width) sequences (ViT); "
            f"backbone '{backbone.spec}' gives {tuple(seen[0]) if seen else 'nothing'}: use lora or ia3"
        )
    prompts = VisualPrompts(n_tokens, seen[0][2]).to(backbone.device)
    hook = blocks[0].register_forward_pre_hook(prompts.insert, with_kwargs=True)
    try:
        prompted = backbone.encode_images(blank).pooled
        if prompted.shape != pooled.shape:
            raise RuntimeError(
                f"pooled features change shape with prompts ({tuple(pooled.shape)} -> {tuple(prompted.shape)})"
            )
    except Exception as error:  # e.g. fixed relative-position tables, windowed blocks: refuse before any training
        hook.remove()
        raise ConfigError(
            f"backbone '{backbone.spec}': its image tower does not take extra prompt tokens ({type(error).__name__}: "
            f"{error}); use lora or ia3"
        ) from None
    parent.add_module("visual_prompts", prompts)


@dataclass
class TuningRequest:
    """What every tuner is given: the towers to tune and the options of ``PeftExperimentConfig``."""

    towers: list[str]
    freeze_blocks: float = 0
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None
    num_virtual_tokens: int = 8


Tuner = Callable[[Backbone, TuningRequest], dict[str, int]]  # -> frozen block count per tower
TUNERS: dict[str, Tuner] = {}


def register_tuner(name: str) -> Callable[[Tuner], Tuner]:
    """Register a way of making towers partly trainable under ``method: name``."""

    def decorator(tuner: Tuner) -> Tuner:
        TUNERS[name] = tuner
        return tuner

    return decorator


def apply_tuning(
    backbone: Backbone,
    towers: str | list[str],
    method: str,
    freeze_blocks: float = 0,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    target_modules: list[str] | None = None,
    num_virtual_tokens: int = 8,
) -> dict[str, int]:
    """Make the tower(s) partly trainable in place with the registered tuner ``method``; returns the frozen block
    count per tower."""
    if method not in TUNERS:
        raise unknown_name("tuning method", method, list(TUNERS))
    towers = [towers] if isinstance(towers, str) else list(towers)
    request = TuningRequest(towers, freeze_blocks, rank, alpha, dropout, target_modules, num_virtual_tokens)
    return TUNERS[method](backbone, request)


def _no_freezing(request: TuningRequest, method: str) -> None:
    if request.freeze_blocks:
        raise ConfigError(
            f"freeze_blocks applies to lora, ia3 and freeze; {method} tuning adds tokens that every block sees"
        )


@register_tuner("prompt")
def visual_prompt_tuning(backbone: Backbone, request: TuningRequest) -> dict[str, int]:
    """VPT-shallow: trainable prompt tokens before the image tower's first block."""
    _no_freezing(request, "prompt")
    if request.towers != ["image"]:
        raise ConfigError("prompt tuning (visual prompts) applies to the image tower; for the text tower use prefix")
    _attach_visual_prompts(backbone, request.num_virtual_tokens)
    return {"image": 0}


@register_tuner("prefix")
def prefix_tuning(backbone: Backbone, request: TuningRequest) -> dict[str, int]:
    """peft prefix tuning of a transformers text tower: trainable key/value tokens in every attention layer."""
    from peft import PrefixTuningConfig, get_peft_model

    _no_freezing(request, "prefix")
    slots = [_prefix_tuning_slot(backbone, tower) for tower in request.towers]  # refuses before changing anything
    for owner, attribute in slots:
        wrapped = get_peft_model(
            getattr(owner, attribute),
            PrefixTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=request.num_virtual_tokens),
        )
        setattr(owner, attribute, wrapped.eval())
    return dict.fromkeys(request.towers, 0)


@register_tuner("freeze")
def freeze_tuning(backbone: Backbone, request: TuningRequest) -> dict[str, int]:
    """Train the tower(s) above the first k blocks (stem included in the frozen part); no adapters."""
    frozen_blocks = {}
    for name in request.towers:
        tower = tower_of(backbone, name)
        frozen_blocks[name], frozen = _frozen_part(tower, request.freeze_blocks)
        for parameter_name, parameter in tower.named_parameters():
            parameter.requires_grad_(parameter_name not in frozen and not UNUSED_OUTPUT_HEADS.search(parameter_name))
    return frozen_blocks


@register_tuner("lora")
def lora_tuning(backbone: Backbone, request: TuningRequest) -> dict[str, int]:
    """LoRA adapters (peft) on the unfrozen part's Linear, Conv2d and fused attention layers."""
    from peft import LoraConfig

    return _inject_adapters(backbone, request, "lora", lambda names: LoraConfig(
        r=request.rank, lora_alpha=request.alpha, lora_dropout=request.dropout, target_modules=names))


@register_tuner("ia3")
def ia3_tuning(backbone: Backbone, request: TuningRequest) -> dict[str, int]:
    """IA3 (peft): learned rescaling of the unfrozen part's Linear and Conv2d outputs."""
    from peft import IA3Config

    return _inject_adapters(backbone, request, "ia3", lambda names: IA3Config(target_modules=names,
                                                                                 feedforward_modules=[]))


def _frozen_part(tower: Tower, freeze_blocks: float) -> tuple[int, set[str]]:
    k = resolve_freeze_blocks(freeze_blocks, len(tower_blocks(tower)[1]), tower.name) if freeze_blocks else 0
    return k, frozen_names(tower, k)


def _inject_adapters(backbone: Backbone, request: TuningRequest, method: str,
                     adapter_config: Callable[[list[str]], object]) -> dict[str, int]:
    from peft import inject_adapter_in_model

    frozen_blocks: dict[str, int] = {}
    targets: dict[int, tuple[nn.Module, list[str]]] = {}  # one injection per root module (open_clip/CLIP: both)
    for name in request.towers:
        tower = tower_of(backbone, name)
        frozen_blocks[name], frozen = _frozen_part(tower, request.freeze_blocks)
        targets.setdefault(id(tower.root), (tower.root, []))[1].extend(
            adapter_targets(tower, request.target_modules, frozen, method)
        )
    for root, names in targets.values():
        inject_adapter_in_model(adapter_config(names), root)
        root.eval()
    return frozen_blocks
