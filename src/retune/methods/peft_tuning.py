"""Tuning the encoders under the RE-tune head: PEFT adapters (LoRA, IA3, prefix) and partial freezing.

MILE (MICCAI 2024) tunes medical encoders with PEFT; arXiv 2406.07450 freezes the first k blocks.
Both are expressed here on a backbone's towers (image, text): adapters are injected with ``peft``
by exact module name (so timm convnets and open_clip ViTs work, not only transformers models), the
first k blocks can be frozen, and for the image tower the frozen blocks' output is cached in the
store (kind ``prefix``) so training runs only the unfrozen top. Encoders always run in eval mode
(BatchNorm statistics and dropout fixed); only the head trains with dropout.
"""

from __future__ import annotations

import re
import resource
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch import nn

from retune.backbones.base import Backbone
from retune.data.images import load_image
from retune.data.table import ImageTable
from retune.errors import ConfigError, DataError, RetuneError
from retune.methods.retune import ReTuneModel
from retune.store import EmbeddingStore, hash_files

TOWERS = ("image", "text")
PEFT_METHODS = ("lora", "ia3", "prefix", "prompt", "freeze")
BLOCK_CONTAINER_NAMES = ("blocks", "resblocks", "layer", "layers")
PREFIX_KIND = "prefix"
PIXEL_MEMORY_BUDGET = 2 * 2**30  # decoded training pixels kept in RAM up to this (about 3,500 images at 224 px)
UNUSED_OUTPUT_HEADS = re.compile(r"(^|\.)(classifier|pooler)(\.|$)")  # ImageNet classifier, BERT pooler: not in the pooled features


# ---------------------------------------------------------------- towers, blocks, freezing


@dataclass
class Tower:
    """One encoder tower: the module holding it and which of that module's names belong to it."""

    name: str
    root: nn.Module
    owns: Callable[[str], bool]

    def named_modules(self) -> Iterator[tuple[str, nn.Module]]:
        return ((n, m) for n, m in self.root.named_modules() if n and self.owns(n))

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.root.named_parameters() if self.owns(n))


def _starts(*prefixes: str) -> Callable[[str], bool]:
    return lambda name: any(name == p or name.startswith(p + ".") for p in prefixes)


def tower_of(backbone: Backbone, tower: str) -> Tower:
    """Locate a tower: ``image_model``/``text_model`` attributes, open_clip's ``visual`` split, or HF CLIP's towers."""
    if tower not in TOWERS:
        raise ConfigError(f"unknown tower '{tower}'; valid towers: image, text")
    own_module = getattr(backbone, f"{tower}_model", None)
    if isinstance(own_module, nn.Module):
        return Tower(tower, own_module, lambda name: True)
    model = getattr(backbone, "model", None)
    if isinstance(model, nn.Module) and hasattr(model, "visual"):  # open_clip: visual vs everything else but logit scale/bias
        in_image = _starts("visual")
        owns = in_image if tower == "image" else (lambda n: not in_image(n) and not n.startswith("logit_"))
        return Tower(tower, model, owns)
    if isinstance(model, nn.Module) and hasattr(model, "vision_model"):  # HF CLIP / SigLIP
        owns = _starts("vision_model", "visual_projection") if tower == "image" else _starts("text_model", "text_projection")
        return Tower(tower, model, owns)
    raise ConfigError(f"backbone '{backbone.spec}': cannot locate its {tower} tower for tuning (supported: default, open_clip, hf, hf-pair)")


def tower_blocks(tower: Tower) -> tuple[str, list[nn.Module]]:
    """The tower's block sequence (EfficientNet stages, ViT/BERT layers): the largest blocks/layers container."""
    candidates = [
        (sum(p.numel() for p in module.parameters()), name, module)
        for name, module in tower.named_modules()
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and name.rsplit(".", 1)[-1] in BLOCK_CONTAINER_NAMES and len(module) >= 2
    ]
    if not candidates:
        raise ConfigError(f"{tower.name} tower ({type(tower.root).__name__}): no block sequence found to freeze")
    _, name, container = max(candidates, key=lambda item: item[0])
    return name, list(container)


def resolve_freeze_blocks(value: float, n_blocks: int, tower: str) -> int:
    """``value`` as a block count: an int k (0..n) or a fraction in (0, 1) of the tower's blocks."""
    if 0 < value < 1:
        return int(round(value * n_blocks))
    if value != int(value) or value > n_blocks:
        raise ConfigError(f"freeze_blocks={value}: the {tower} tower has {n_blocks} blocks; give an int 0..{n_blocks} or a fraction in (0, 1)")
    return int(value)


def frozen_names(tower: Tower, k: int) -> set[str]:
    """Parameter names of the stem (embeddings, everything registered before the blocks) and of the first k blocks."""
    if k == 0:
        return set()
    container, blocks = tower_blocks(tower)
    frozen_blocks = tuple(f"{container}.{i}" for i in range(k))
    in_blocks = _starts(container)
    frozen, seen_blocks = set(), False
    for name, _ in tower.named_parameters():
        seen_blocks = seen_blocks or in_blocks(name)
        if not seen_blocks or "embed" in name or _starts(*frozen_blocks)(name):
            frozen.add(name)
    return frozen


# ---------------------------------------------------------------- adapters (peft)


def _is_adaptable(module: nn.Module, parent: nn.Module | None, method: str) -> bool:
    """Linear and ungrouped Conv2d layers; for LoRA also whole ``nn.MultiheadAttention`` modules (open_clip, CheXzero),
    whose q/k/v live in one fused ``in_proj_weight`` that peft's LoRA MultiheadAttention layer adapts."""
    if isinstance(parent, nn.MultiheadAttention):  # out_proj's weight is read directly by the parent, an adapter would be bypassed
        return False
    if isinstance(module, nn.MultiheadAttention):  # peft merges the adapter into the frozen weights around each forward (fp32 drift ~1e-8)
        return method == "lora" and module._qkv_same_embed_dim
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def adapter_targets(tower: Tower, patterns: list[str] | None, frozen: set[str], method: str = "lora") -> list[str]:
    """Full names of the modules to adapt (see ``_is_adaptable``): outside the frozen part, matching ``patterns``."""
    modules = dict(tower.root.named_modules())
    targets = []
    for name, module in tower.named_modules():
        parent = modules.get(name.rpartition(".")[0]) if "." in name else tower.root
        if not _is_adaptable(module, parent, method) or UNUSED_OUTPUT_HEADS.search(name) or any(p.startswith(name + ".") for p in frozen):
            continue
        if patterns and not any(re.search(pattern, name) for pattern in patterns):
            continue
        targets.append(name)
    if not targets:
        raise ConfigError(f"{tower.name} tower: no module to adapt with {method}" + (f" matches target_modules {patterns}" if patterns else ""))
    return targets


def _prefix_tuning_slot(backbone: Backbone, tower: str) -> tuple[object, str]:
    """(owner, attribute) of the transformers text model that prefix tuning wraps, or ConfigError saying why not."""
    from transformers import PreTrainedModel

    if tower != "text":
        raise ConfigError("prefix tuning prepends key/value tokens to a transformers text model's attention; it does not apply to the image tower")
    slots = [(backbone, "text_model"), (getattr(getattr(backbone, "model", None), "text", None), "transformer")]
    for owner, attribute in slots:
        if isinstance(getattr(owner, attribute, None), PreTrainedModel):
            return owner, attribute
    raise ConfigError(
        f"prefix tuning needs the text tower to be a transformers model (default, hf-pair, open_clip with an HF text tower); "
        f"backbone '{backbone.spec}' has another text tower: use lora or ia3"
    )


def pixel_shape(backbone: Backbone) -> tuple[int, ...]:
    """Shape of one preprocessed image (C x H x W), found by preprocessing a blank one."""
    return tuple(backbone.preprocess(Image.new("RGB", (64, 64))).shape)


class VisualPrompts(nn.Module):
    """Visual prompt tuning (VPT-shallow, Jia et al. 2022): learnable tokens inserted after the first token (the class
    token of a ViT) before the tower's first block, so the patch tokens stay last, as RoPE ViTs expect. Class-token
    pooling reads the image as before; pooling over all tokens (mean, attention pool) also sees the prompts, as in VPT."""

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
        raise ConfigError(f"backbone '{backbone.spec}' already has visual prompts: load a fresh backbone to tune it again")
    blank = torch.zeros(2, *pixel_shape(backbone))
    seen: list[torch.Size] = []
    probe = blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    try:
        pooled = backbone.encode_images(blank).pooled
    finally:
        probe.remove()
    if not seen or len(seen[0]) != 3 or seen[0][0] != 2:
        raise ConfigError(f"prompt tuning needs an image tower whose blocks take (batch, tokens, width) sequences (ViT); "
                          f"backbone '{backbone.spec}' gives {tuple(seen[0]) if seen else 'nothing'}: use lora or ia3")
    prompts = VisualPrompts(n_tokens, seen[0][2]).to(backbone.device)
    hook = blocks[0].register_forward_pre_hook(prompts.insert, with_kwargs=True)
    try:
        prompted = backbone.encode_images(blank).pooled
        if prompted.shape != pooled.shape:
            raise RuntimeError(f"pooled features change shape with prompts ({tuple(pooled.shape)} -> {tuple(prompted.shape)})")
    except Exception as error:  # e.g. fixed relative-position tables, windowed blocks: refuse before any training
        hook.remove()
        raise ConfigError(f"backbone '{backbone.spec}': its image tower does not take extra prompt tokens ({type(error).__name__}: {error}); use lora or ia3") from None
    parent.add_module("visual_prompts", prompts)


def apply_tuning(backbone: Backbone, towers: str | list[str], method: str, freeze_blocks: float = 0, rank: int = 8, alpha: float = 16.0,
                 dropout: float = 0.0, target_modules: list[str] | None = None, num_virtual_tokens: int = 8) -> dict[str, int]:
    """Make the tower(s) partly trainable in place (adapters or unfrozen top blocks); returns the frozen block count per tower."""
    towers = [towers] if isinstance(towers, str) else list(towers)
    if method not in PEFT_METHODS:
        raise ConfigError(f"unknown tuning method '{method}'; valid: {', '.join(PEFT_METHODS)}")
    if method in ("prefix", "prompt") and freeze_blocks:
        raise ConfigError(f"freeze_blocks applies to lora, ia3 and freeze; {method} tuning adds tokens that every block sees")
    if method == "prompt":
        if towers != ["image"]:
            raise ConfigError("prompt tuning (visual prompts) applies to the image tower; for the text tower use prefix")
        _attach_visual_prompts(backbone, num_virtual_tokens)
        return {"image": 0}
    if method == "prefix":
        from peft import PrefixTuningConfig, get_peft_model

        slots = [_prefix_tuning_slot(backbone, tower) for tower in towers]  # refuses the image tower before changing anything
        for owner, attribute in slots:
            wrapped = get_peft_model(getattr(owner, attribute), PrefixTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=num_virtual_tokens))
            setattr(owner, attribute, wrapped.eval())
        return dict.fromkeys(towers, 0)
    frozen_blocks: dict[str, int] = {}
    targets: dict[int, tuple[nn.Module, list[str]]] = {}  # one injection per root module (open_clip/CLIP hold both towers)
    for name in towers:
        tower = tower_of(backbone, name)
        k = resolve_freeze_blocks(freeze_blocks, len(tower_blocks(tower)[1]), name) if freeze_blocks else 0
        frozen_blocks[name], frozen = k, frozen_names(tower, k)
        if method == "freeze":
            for parameter_name, parameter in tower.named_parameters():
                parameter.requires_grad_(parameter_name not in frozen and not UNUSED_OUTPUT_HEADS.search(parameter_name))
        else:
            targets.setdefault(id(tower.root), (tower.root, []))[1].extend(adapter_targets(tower, target_modules, frozen, method))
    if targets:
        from peft import IA3Config, LoraConfig, inject_adapter_in_model

        for root, names in targets.values():
            if method == "lora":
                config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names)
            else:
                config = IA3Config(target_modules=names, feedforward_modules=[])
            inject_adapter_in_model(config, root)
            root.eval()
    return frozen_blocks


# ---------------------------------------------------------------- differentiable forward passes


def differentiable(encode: Callable) -> Callable:
    """A backbone's ``encode_images``/``encode_texts`` without its ``inference_mode`` decorator (same code, with grads)."""
    inner = getattr(encode.__func__, "__wrapped__", None)
    if inner is None:
        raise ConfigError(f"{encode.__qualname__} is not an inference-mode wrapped encoder; cannot run it with gradients")
    return inner.__get__(encode.__self__)


_SPLIT_LOCK = threading.RLock()  # BlockSplit hooks and swaps modules of a shared backbone: serialise them across threads


class _PrefixReached(Exception):
    """Raised by the capture hook to stop a forward pass once the first k blocks have run."""


class _Emit(nn.Module):
    """Stand-in for block 0: ignores its input and emits the cached activations (as a 1-tuple where blocks return tuples)."""

    def __init__(self, activations: torch.Tensor, as_tuple: bool) -> None:
        super().__init__()
        self.activations, self.as_tuple = activations, as_tuple

    def forward(self, hidden, *args, **kwargs):
        activations = self.activations.to(device=hidden.device, dtype=hidden.dtype)
        return (activations,) if self.as_tuple else activations


class _PassThrough(nn.Module):
    """Stand-in for blocks 1..k-1: hands its input on unchanged."""

    def __init__(self, as_tuple: bool) -> None:
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, hidden, *args, **kwargs):
        return (hidden,) if self.as_tuple else hidden


class BlockSplit:
    """The image tower cut after block k, for any tower whose blocks run in sequence (timm convnets, ViTs, HF encoders).

    ``prefix``: the first k blocks' output, captured by a forward hook that stops the pass there. ``top``: the
    tower's own forward with blocks[:k] swapped for stand-ins that emit the cached activations, so what follows
    (later blocks, norms, pooling, projection) is exactly the backbone's code. The stem then runs on blank pixels:
    a cheap first layer whose output the stand-ins discard.
    """

    def __init__(self, backbone: Backbone, k: int) -> None:
        tower = tower_of(backbone, "image")
        name, blocks = tower_blocks(tower)
        if not 0 < k <= len(blocks):
            raise ConfigError(f"cannot split the image tower after block {k}: it has {len(blocks)} blocks")
        self.backbone, self.k, self.blocks = backbone, k, blocks
        self.container = dict(tower.root.named_modules())[name]
        self.pixel_shape = pixel_shape(backbone)
        probe, self.as_tuple = self._capture(torch.zeros(2, *self.pixel_shape))
        if probe.shape[0] != 2:
            raise ConfigError(
                f"backbone '{backbone.spec}': block {k} of the image tower does not put the batch first (shape {tuple(probe.shape)}), "
                "so its activations cannot be cached per image: set cache_prefix: false"
            )
        self.activation_shape = tuple(probe.shape[1:])

    def _capture(self, pixels: torch.Tensor) -> tuple[torch.Tensor, bool]:
        captured: list = []

        def stop_after(module, args, output):
            captured.append(output)
            raise _PrefixReached

        with _SPLIT_LOCK:
            handle = self.blocks[self.k - 1].register_forward_hook(stop_after)
            try:
                self.backbone.encode_images(pixels)
            except _PrefixReached:
                pass
            finally:
                handle.remove()
        if not captured:
            raise ConfigError(f"backbone '{self.backbone.spec}': encode_images never ran image block {self.k - 1}, so its output cannot be cached")
        output = captured[0]
        as_tuple = isinstance(output, tuple)
        return (output[0] if as_tuple else output).float().clone(), as_tuple

    def prefix(self, pixels: torch.Tensor) -> torch.Tensor:
        """Activations after the first k blocks (no gradients)."""
        return self._capture(pixels)[0]

    def top(self, activations: torch.Tensor) -> torch.Tensor:
        """Pooled image features from cached activations, with gradients through the unfrozen blocks and adapters."""
        stand_ins = [_Emit(activations, self.as_tuple)] + [_PassThrough(self.as_tuple) for _ in range(self.k - 1)]
        blank = torch.zeros(len(activations), *self.pixel_shape, device=self.backbone.device)
        encode = differentiable(self.backbone.encode_images)
        with _SPLIT_LOCK:  # the swap is visible to every user of this backbone: one split pass at a time
            originals = [self.container[i] for i in range(self.k)]
            try:
                for i, stand_in in enumerate(stand_ins):
                    self.container[i] = stand_in
                return encode(blank).pooled
            finally:
                for i, original in enumerate(originals):
                    self.container[i] = original


def image_split(backbone: Backbone, k: int) -> BlockSplit:
    """The forward split used to cache the first k image blocks, or ConfigError saying why this tower cannot be split."""
    try:
        return BlockSplit(backbone, k)
    except ConfigError as error:
        raise ConfigError(f"caching the frozen image blocks: {error}") from None


def can_cache_prefix(backbone: Backbone, k: int) -> bool:
    """Whether the first k image blocks' output can be cached per image for this backbone."""
    try:
        image_split(backbone, k)
    except ConfigError:
        return False
    return True


def image_features_fn(backbone: Backbone, k: int, inputs_are_prefix: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """inputs (pixels, or cached first-k-block activations) -> pooled image features with gradients where trainable.

    On pixels the whole tower runs; autograd records nothing in the frozen part (no parameter there needs a gradient).
    """
    if inputs_are_prefix:
        return image_split(backbone, k).top
    encode = differentiable(backbone.encode_images)
    return lambda pixels: encode(pixels).pooled


def prompt_features_fn(backbone: Backbone, prompts: dict) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """Re-encode every class's prompts through the (trainable) text tower; returns averaged positive and negative rows."""
    encode = differentiable(backbone.encode_texts)
    texts = list(dict.fromkeys(t for p in prompts.values() for t in (*p.positive, *p.negative)))
    index = {t: i for i, t in enumerate(texts)}

    def averaging(side: str) -> torch.Tensor:
        weights = torch.zeros(len(prompts), len(texts))
        for row, class_prompts in enumerate(prompts.values()):
            members = [index[t] for t in getattr(class_prompts, side)]
            weights[row, members] = 1.0 / len(members)
        return weights.to(backbone.device)

    positive, negative = averaging("positive"), averaging("negative")

    def features() -> tuple[torch.Tensor, torch.Tensor]:
        vectors = encode(texts).pooled
        return positive @ vectors, negative @ vectors

    return features


# ---------------------------------------------------------------- the tuned model


def _key(name: str) -> str:
    return name.replace(".", "__")


class TunedReTune(nn.Module):
    """RE-tune head on partly trainable encoders; ``state_dict`` holds the head and the trainable encoder tensors only."""

    def __init__(self, head: ReTuneModel, image_features: Callable, prompt_features: Callable | None, encoder_parameters: dict[str, nn.Parameter]) -> None:
        super().__init__()
        self.head = head
        self.encoder = nn.ParameterDict({_key(name): p for name, p in encoder_parameters.items()})  # shared with the backbone
        self.image_features = image_features
        self.prompt_features = prompt_features

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.prompt_features is not None:
            self.head.positive, self.head.negative = self.prompt_features()
        return self.head(self.image_features(inputs))

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor, objective: str) -> torch.Tensor:
        """The RE-tune head's objective (bce, clip, siglip) on every class, through the trainable encoder parts."""
        if self.prompt_features is not None:
            self.head.positive, self.head.negative = self.prompt_features()
        features = self.image_features(inputs).float()
        return self.head.loss(features, labels.to(features.device), objective, torch.arange(labels.shape[1]))[0]

    @torch.no_grad()
    def freeze_prompts(self) -> None:
        """Store the tuned text tower's final prompt embeddings in the head's buffers (for the checkpoint)."""
        if self.prompt_features is not None:
            positive, negative = self.prompt_features()
            self.head.positive, self.head.negative = positive.detach(), negative.detach()


def trainable_encoder_parameters(backbone: Backbone) -> dict[str, nn.Parameter]:
    """Encoder parameters that require grad after tuning was applied, by ``attribute.name``."""
    found = {}
    for attribute, module in vars(backbone).items():
        if isinstance(module, nn.Module):
            found.update({f"{attribute}.{n}": p for n, p in module.named_parameters() if p.requires_grad})
    return found


def parameter_report(backbone: Backbone, model: TunedReTune) -> dict:
    """Trainable and total parameter counts (encoders incl. adapters + head) and the trainable percentage."""
    unique = {id(p): p for module in [*backbone.modules, model] for p in module.parameters()}
    total = sum(p.numel() for p in unique.values())
    trainable = sum(p.numel() for p in unique.values() if p.requires_grad)
    return {"trainable_parameters": trainable, "total_parameters": total, "trainable_percent": round(100.0 * trainable / total, 4)}


# ---------------------------------------------------------------- images and the prefix cache


def decode_pixels(paths: list[str], backbone: Backbone) -> list[torch.Tensor | None]:
    """Preprocessed CHW tensors; None for an unreadable image."""
    pixels: list[torch.Tensor | None] = []
    for path in paths:
        try:
            pixels.append(backbone.preprocess(load_image(path)))
        except RetuneError:
            pixels.append(None)
    return pixels


class PixelsOnAccess:
    """Preprocessed pixels of a fixed list of images, decoded when rows are indexed: memory is one batch, not the data set."""

    def __init__(self, paths: list[str], backbone: Backbone) -> None:
        self.paths, self.backbone = list(paths), backbone

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, rows: torch.Tensor | np.ndarray) -> torch.Tensor:
        indices = torch.as_tensor(rows).reshape(-1).tolist()
        return torch.stack([self.backbone.preprocess(load_image(self.paths[i])) for i in indices])


def pixel_inputs(paths: list[str], backbone: Backbone, memory_budget: int = PIXEL_MEMORY_BUDGET) -> tuple[torch.Tensor | PixelsOnAccess, np.ndarray]:
    """(inputs indexable by row, readable rows): decoded pixels held in memory while they fit ``memory_budget`` bytes,
    else decoded again batch by batch (every image is decoded once up front to find the unreadable ones)."""
    per_image = int(np.prod(pixel_shape(backbone))) * 4  # float32 pixels of one image
    if per_image * len(paths) <= memory_budget:
        pixels = decode_pixels(paths, backbone)
        rows = np.asarray([row for row, tensor in enumerate(pixels) if tensor is not None], dtype=int)
        return (torch.stack([pixels[row] for row in rows]) if len(rows) else torch.zeros(0)), rows  # peak: about twice the budget
    rows = np.asarray([row for row, path in enumerate(paths) if decode_pixels([path], backbone)[0] is not None], dtype=int)
    return PixelsOnAccess([paths[row] for row in rows], backbone), rows


def prefix_fingerprint(backbone: Backbone, k: int) -> str:
    """Store key of the first-k-block activations: the backbone fingerprint plus k."""
    return f"{backbone.fingerprint}-k{k}"


@dataclass
class PrefixActivations:
    """Cached first-k-block activations for the readable rows of a table."""

    activations: torch.Tensor
    rows: np.ndarray
    n_computed: int
    fingerprint: str = ""
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason


def prefix_activations(table: ImageTable, backbone: Backbone, k: int, store: EmbeddingStore, batch_size: int = 16, require_rows: bool = True) -> PrefixActivations:
    """Output of the image tower's first k blocks per row, computing only what the store lacks.

    With no readable image: DataError, or with ``require_rows=False`` an empty result that lists the failures.
    """
    split = image_split(backbone, k)
    fingerprint = prefix_fingerprint(backbone, k)
    hashes, failures = hash_files(table.paths, store, confine_to=table.confined_root)
    computed = 0
    stored = store.keys(PREFIX_KIND, fingerprint)
    # the lock (a write) only when something is missing: a fully cached read-only store serves reads
    with store.lock() if set(hashes.values()) - stored else nullcontext():
        stored = store.keys(PREFIX_KIND, fingerprint)
        todo = {}
        for path, content_hash in hashes.items():
            if content_hash not in stored:
                todo.setdefault(content_hash, path)
        items = list(todo.items())
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            pixels = decode_pixels([path for _, path in batch], backbone)
            good = [(key, tensor) for (key, _), tensor in zip(batch, pixels) if tensor is not None]
            failures.update({path: "unreadable image" for (_, path), tensor in zip(batch, pixels) if tensor is None})
            if not good:
                continue
            activations = split.prefix(torch.stack([t for _, t in good])).cpu()
            store.register_backbone({**backbone.describe(), "fingerprint": fingerprint, "prefix_blocks": k, "activation_shape": list(activations.shape[1:])})
            store.write_vectors(PREFIX_KIND, fingerprint, [key for key, _ in good], activations.numpy())
            stored.update(key for key, _ in good)
            computed += len(good)
    rows = np.asarray([row for row, path in enumerate(table.paths) if hashes.get(path) in stored], dtype=int)
    if not len(rows):
        if require_rows:
            raise DataError(f"{table.source}: no readable image to compute first-{k}-block activations for")
        return PrefixActivations(torch.zeros(0), rows, computed, fingerprint, dict(sorted(failures.items())))
    shape = store.manifest["backbones"][fingerprint]["activation_shape"]
    _, flat = store.read_vectors(PREFIX_KIND, fingerprint, [hashes[table.paths[row]] for row in rows])
    return PrefixActivations(torch.from_numpy(np.ascontiguousarray(flat)).view(len(rows), *shape), rows, computed, fingerprint, dict(sorted(failures.items())))


# ---------------------------------------------------------------- peak memory


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Peak memory of the enclosed work in MB: CUDA max_memory_allocated, or on CPU the sampled RSS high-water mark."""
    report: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield report
        torch.cuda.synchronize(device)
        report["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        report["peak_memory_above_start_mb"] = round((torch.cuda.max_memory_allocated(device) - start) / 2**20, 1)
        report["peak_memory_source"] = "CUDA: torch.cuda.max_memory_allocated during training + evaluation (peak_memory_above_start_mb: minus what was allocated at start)"
        return
    start, peak, done = _rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            done.wait(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield report
    finally:
        done.set()
        sampler.join()
        peak[0] = max(peak[0], _rss_bytes())
        report["peak_memory_mb"] = round(peak[0] / 2**20, 1)
        report["peak_memory_above_start_mb"] = round(max(peak[0] - start, 0) / 2**20, 1)
        report["peak_memory_source"] = (
            "CPU: process RSS sampled every 5 ms (/proc/self/statm) during training + evaluation; peak_memory_mb is the whole "
            "process, peak_memory_above_start_mb the growth (0 when memory freed by an earlier run in the process is reused)"
        )


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * resource.getpagesize()
    except OSError:  # not Linux: the lifetime high-water mark (KB on Linux/BSD, bytes on macOS)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed() -> Callable[[], float]:
    """Start a stopwatch; calling the result gives seconds since (CUDA work included)."""
    started = time.perf_counter()

    def elapsed() -> float:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return time.perf_counter() - started

    return elapsed
