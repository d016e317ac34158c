"""Typed configurations (pydantic) that load from YAML and are saved next to every result."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from retune.errors import ConfigError
from retune.io_utils import MAX_TEXT_BYTES, read_text_checked

# The names each choice accepts, declared once: code that dispatches on them reads get_args() of these.
AdaptorKind = Literal["identity", "dense", "mlp"]
PromptObjective = Literal["bce", "clip", "siglip"]
PairLoss = Literal["clip", "siglip"]
PeftMethod = Literal["lora", "ia3", "prefix", "prompt", "freeze"]


class StrictModel(BaseModel):
    """Unknown keys are errors, so a typo in a YAML file is reported instead of ignored."""

    model_config = ConfigDict(extra="forbid")


class AdaptorConfig(StrictModel):
    """Image and text adaptors mapping both towers into one shared space."""

    image: AdaptorKind = "dense"
    text: AdaptorKind = "dense"
    shared_dim: int = Field(256, ge=1, description="Width of the shared space (ignored on a side that is identity).")
    hidden_dim: int = Field(512, ge=1, description="Hidden width of mlp adaptors.")
    residual: bool = Field(False, description="mlp only: add a linear skip path.")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="Dropout on the adaptor inputs (regularises small data).")


class OptimConfig(StrictModel):
    """AdamW with early stopping on validation mean AUROC."""

    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    epochs: int = Field(300, ge=1)
    batch_size: int = Field(0, ge=0, description="0 = full batch (fastest on cached vectors).")
    patience: int = Field(40, ge=1, description="Epochs without validation improvement before stopping.")
    min_epochs: int = Field(
        30, ge=1, description="Epochs before early stopping may keep or stop (small validation sets are noisy)."
    )
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "auto",
        description="Arithmetic of the training steps: fp32; bf16 autocast (fp32 master weights); auto = bf16 where "
                    "the CPU (AVX-512 BF16/AMX) or GPU runs it natively, else fp32 (NIH final AUROC of retune: bf16 - "
                    "fp32 = +0.0008, benchmarks/results/training.json). Encoder tuning (PEFT) keeps fp32.",
    )
    early_stopping: Literal["auroc", "loss"] = Field(
        "auroc",
        description="Validation criterion: mean AUROC, or the training loss on the validation rows (smoother on small "
        "validation sets).",
    )


class ContinualConfig(StrictModel):
    """Strengths of the continual regularisers (LwF / RE-tune distillation, EWC)."""

    distill_temperature: float = Field(
        2.0, gt=0, description="Softening temperature of logit distillation (lwf, retune-distill)."
    )
    ewc_lambda: float = Field(
        1000.0, gt=0, description="EWC penalty weight (the penalty is averaged over anchored parameters)."
    )


class ReTuneConfig(StrictModel):
    """The RE-tune method: prompts, adaptors, temperature and optimisation."""

    prompts: str = Field("manual", description="Prompt set name (template, manual) or a YAML file.")
    adaptor: AdaptorConfig = AdaptorConfig()
    objective: PromptObjective = Field(
        "bce",
        description="Training loss on the prompt similarities: bce (the paper), clip (symmetric InfoNCE on "
        "label-defined "
        "image-prompt pairs) or siglip (sigmoid loss on every image-prompt pair, learnable bias). Prediction is the "
        "same for all.",
    )
    tau: float = Field(10.0, gt=0, description="Initial logit scale applied to (s+ - s-).")
    learn_tau: bool = True
    optim: OptimConfig = OptimConfig()
    continual: ContinualConfig = ContinualConfig()


class DataConfig(StrictModel):
    """Where the labelled images are and how to read them."""

    csv: Path | None = None
    image_root: Path | None = None
    allow_outside_root: bool = Field(
        False, description="Also read image paths that resolve outside image_root (absolute paths, symlinks)."
    )
    format: str = Field("auto", description="A registered reader (csv, chexpert, nih, mimic, ...) or auto.")
    uncertainty: Literal["ignore", "ones", "zeros"] = "ignore"
    classes: list[str] | None = None
    metadata_csv: Path | None = Field(None, description="mimic only: mimic-cxr-2.0.0-metadata.csv (images per study).")


class SplitConfig(StrictModel):
    """Patient-level train/val/test split."""

    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    seed: int = Field(0, ge=0)

    @field_validator("fractions")
    @classmethod
    def _sum_to_one(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if abs(sum(value) - 1.0) > 1e-6 or min(value) < 0:
            raise ValueError(
                f"split fractions (train, val, test) must be non-negative and sum to 1, got {list(value)}"
            )
        if value[0] == 0 or value[2] == 0:
            raise ValueError(f"the train and test fractions must be positive, got {list(value)}")
        return value


class ExperimentConfig(StrictModel):
    """What every experiment names: backbone, embedding store, data, patient split, seed and device."""

    backbone: str = "default"
    store: Path = Path("retune-store")
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    seed: int = Field(0, ge=0)
    device: str | None = None
    min_positives: int = Field(
        10,
        ge=1,
        description="Headline means cover only classes with at least this many positive test images; "
        "the others are listed, marked and left out.",
    )
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (default: a local file store in OUT/mlruns)."
    )


class TrainConfig(ExperimentConfig):
    """Everything ``retune train`` needs; saved as the run's config."""

    retune: ReTuneConfig = ReTuneConfig()
    baselines: list[str] = Field(default_factory=lambda: ["linear_probe", "zero_shot"])
    n_bootstrap: int = Field(1000, ge=0)


ModelT = TypeVar("ModelT", bound=BaseModel)


def absolute_paths(model: ModelT, folder: Path, only_set: bool = False) -> ModelT:
    """``model`` with every relative path field (nested configs and lists of them included) joined onto ``folder``;
    ``only_set``: only the fields given explicitly (a YAML's own paths), leaving defaults such as ``retune-store`` to
    the working folder."""
    def resolved(value: object) -> object:
        if isinstance(value, BaseModel):
            return absolute_paths(value, folder, only_set)
        if isinstance(value, list):
            return [resolved(item) for item in value]
        if isinstance(value, Path):
            value = value.expanduser()
            return value if value.is_absolute() else Path(os.path.abspath(folder / value))
        return value

    names = model.model_fields_set if only_set else type(model).model_fields
    updates = {name: resolved(getattr(model, name)) for name in names}
    return model.model_copy(update=updates)


def load_yaml_config(path: str | Path, model: type[BaseModel]) -> BaseModel:
    """Parse a YAML file into ``model``; errors name the file and the offending field. Relative paths in the file
    (``data.csv``, ``data.image_root``, ``store``, ...) resolve against the YAML file's folder, not the folder the
    command runs in, so a config works from anywhere; paths given on the command line resolve as usual."""
    path = Path(path)
    text = read_text_checked(path, MAX_TEXT_BYTES, "YAML file")
    try:
        raw = yaml.safe_load(text) or {}
    except (yaml.YAMLError, RecursionError) as error:
        detail = " ".join(str(error).split()) or "nested too deeply"
        raise ConfigError(f"{path}: cannot read YAML ({detail})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config holds field: value pairs, not a {type(raw).__name__}")
    return absolute_paths(parse_config(raw, model, str(path)), path.resolve().parent, only_set=True)


def parse_config(raw: dict, model: type[BaseModel], where: str) -> BaseModel:
    """Validate a dict into ``model``; the first problem becomes one line naming the field."""
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise ConfigError(f"{where}: field '{field}': {first['msg']}") from None


ModelT = TypeVar("ModelT", bound=BaseModel)


def override(config: ModelT, updates: dict, where: str = "command line") -> ModelT:
    """``config`` with the non-None ``updates`` applied (a dict value updates that sub-config), validated like a YAML
    file."""
    merged = config.model_dump()
    for key, value in updates.items():
        if isinstance(value, dict):
            merged[key] = {**merged[key], **{k: v for k, v in value.items() if v is not None}}
        elif value is not None:
            merged[key] = value
    return parse_config(merged, type(config), where)


class AdaptorExperimentConfig(ExperimentConfig):
    """Adaptor pre-training (a small transformer on frozen towers' tokens) + label-efficiency probes + retrieval."""

    layers: int = Field(2, ge=1, description="Self-attention layers per modality (used at inference).")
    fusion_layers: int = Field(
        1, ge=0, description="Bi-directional cross-attention layers, used only by the image-text matching loss."
    )
    heads: int = Field(4, ge=1)
    width: int = Field(256, ge=1, description="Transformer width; must be divisible by heads.")
    embed_dim: int = Field(128, ge=1, description="Shared image-text embedding dimension.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    loss: PairLoss = "clip"
    itm_weight: float = Field(
        1.0, ge=0.0, description="Weight of the image-text matching loss (0 = contrastive only)."
    )
    max_text_tokens: int = Field(64, ge=1, description="Text tokens kept (and cached) per text.")
    optim: OptimConfig = OptimConfig(lr=3e-4, weight_decay=0.05, epochs=60, batch_size=64, patience=10, min_epochs=5)
    label_fractions: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0])
    n_bootstrap: int = Field(1000, ge=0)

    @field_validator("label_fractions")
    @classmethod
    def _fractions_in_range(cls, value: list[float]) -> list[float]:
        if not value or any(not 0 < f <= 1 for f in value):
            raise ValueError(f"label fractions must be non-empty and each in (0, 1], got {value}")
        return value

    @field_validator("width")
    @classmethod
    def _width_divides(cls, value: int, info) -> int:
        heads = info.data.get("heads")
        if heads and value % heads:
            raise ValueError(f"width {value} is not divisible by heads {heads}")
        return value


class PeftExperimentConfig(ExperimentConfig):
    """Encoder tuning under the RE-tune head: PEFT (LoRA, IA3, prefix) or freezing the first k blocks."""

    tower: Literal["image", "text", "both"] = "image"
    method: PeftMethod = Field(
        "lora",
        description="lora, ia3, prefix (text tower), prompt (visual prompt tokens, ViT image towers) or freeze (train "
        "only the unfrozen top blocks).",
    )
    rank: int = Field(8, ge=1, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha / rank).")
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="LoRA dropout (encoders run in eval mode, so it is inactive)."
    )
    target_modules: list[str] | None = Field(
        None,
        description="Regexes on module names to adapt; default: every Linear and ungrouped Conv2d of the tuned "
        "blocks.",
    )
    num_virtual_tokens: int = Field(
        8, ge=1, description="Prefix tuning: virtual key/value tokens per layer; prompt tuning: prompt tokens."
    )
    freeze_blocks: float = Field(
        0, ge=0, description="Freeze the first k blocks of the tuned tower(s): an int k, or a fraction in (0, 1)."
    )
    cache_prefix: bool | None = Field(
        None,
        description="Image tower with freeze_blocks: cache the frozen blocks' output in the store (true: required, "
        "false: re-run them every step, null: cache where the tower supports it).",
    )
    epochs: int = Field(2, ge=1)
    lr: float | None = Field(
        None,
        gt=0,
        description="Learning rate; default 1e-3 for adapters (lora, ia3, prefix), 1e-4 for freeze "
        "(whole weights of the unfrozen blocks: 1e-3 wrecked the ImageNet features on NIH, mean AUROC 0.54 vs 0.70).",
    )
    batch_size: int = Field(16, ge=1)
    retune: ReTuneConfig = ReTuneConfig()
    n_bootstrap: int = Field(1000, ge=0)

    @property
    def learning_rate(self) -> float:
        """``lr``, or the default for the method."""
        return self.lr if self.lr is not None else (1e-4 if self.method == "freeze" else 1e-3)
