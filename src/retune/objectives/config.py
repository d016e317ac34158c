"""Typed configuration of objective mixes and of ``retune adaptor bench`` (loadable from YAML).

A mix maps objective names to a weight or to the objective's options:
``{clip: 1.0, caption: 0.5, masked: {ratio: 0.5}}`` (an options dict without ``weight`` weighs 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from retune.config import AdaptorExperimentConfig, OptimConfig, SplitConfig, StrictModel
from retune.objectives.base import OBJECTIVES, ObjectiveOptions

MixSpec = dict[str, float | dict[str, Any] | None]


def parse_mix(raw: MixSpec) -> dict[str, ObjectiveOptions]:
    """Each objective's validated options; unknown names, bad options and an all-zero mix raise one ValueError line
    naming the objective and field."""
    if not isinstance(raw, dict) or not raw:
        raise ValueError("give at least one objective, e.g. {clip: 1.0}")
    parsed: dict[str, ObjectiveOptions] = {}
    for name, value in raw.items():
        if name not in OBJECTIVES:
            raise ValueError(f"unknown objective '{name}'; valid: {', '.join(sorted(OBJECTIVES))}")
        fields = value if isinstance(value, dict) else ({} if value is None else {"weight": value})
        try:
            parsed[name] = OBJECTIVES[name].Options.model_validate(fields)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ValueError(f"{name}.{where}: {first['msg']}") from None
    if not any(options.weight > 0 for options in parsed.values()):
        raise ValueError(f"every weight is 0 ({', '.join(parsed)}); give at least one objective a positive weight")
    return parsed


class PairsConfig(StrictModel):
    """Where each image's text comes from, and text-only texts for the unimodal text terms."""

    source: Literal["labels", "csv"] = Field(
        "labels",
        description="labels: SYNTHETIC sentences written from the label columns by templates (NIH); csv: a text "
        "column of the data CSV (real notes or reports, or a user's `path, text` pairs).",
    )
    text_column: str = Field("text", description="csv source: the column holding each image's text.")
    phrasings: int = Field(4, ge=1, le=4, description="labels source: templates drawn from per training image.")
    empty_text: Literal["error", "skip"] = Field(
        "error", description="csv source: a row with an empty text is an error naming the row, or left out (counted)."
    )
    text_only: Path | None = Field(
        None,
        description="Open-i report archive (.tgz) or a CSV with a `text` column: texts without images, used by the "
        "unimodal objective's text terms.",
    )
    text_only_limit: int | None = Field(None, ge=1, description="Use at most this many text-only texts.")


def fixed_budget(lr: float, weight_decay: float, epochs: int, batch_size: int) -> OptimConfig:
    """AdamW for exactly ``epochs`` epochs (no early stop; the best validation epoch is kept), the same budget for
    every mix a bench task compares."""
    return OptimConfig(lr=lr, weight_decay=weight_decay, epochs=epochs, batch_size=batch_size, patience=epochs,
                       min_epochs=1, precision="fp32")


class BenchVqaTask(StrictModel):
    """The bench's VQA task: closed questions built from the labels on the bench's patient split, answered by a VQA
    model whose fusion module starts from each pre-trained adaptor (its towers; the cross-attention blocks start
    fresh) and is fine-tuned with the same budget for every mix, and once from no pre-training."""

    epochs: int = Field(4, ge=1, description="Fine-tuning epochs of every answerer (best validation accuracy kept).")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate (weight decay 0.01).")
    batch_size: int = Field(32, ge=1, description="Images per step (each with all its questions).")
    choice_fraction: float = Field(0.5, ge=0, le=1, description="Share of images that get a multiple-choice question.")

    def optim(self) -> OptimConfig:
        """The answerers' training settings."""
        return fixed_budget(self.lr, 0.01, self.epochs, self.batch_size)


class BenchSegmentationTask(StrictModel):
    """The bench's Dice task: a 1x1 linear head on the adaptor image tower's token states (the tokens' own grid,
    frozen adaptor) trained on a mask table's structure, scored by Dice on its test patients; beside the same head
    on the frozen tokens."""

    csv: Path = Field(description="Mask table (cxr-seg masks.csv, a SIIM CSV or a mask folder).")
    structure: str = Field("lungs", description="The structure to segment.")
    split: SplitConfig = Field(SplitConfig(), description="Patient split of the mask table.")
    epochs: int = Field(30, ge=1, description="Epochs of every head (best validation Dice kept).")
    lr: float = Field(1e-2, gt=0, description="AdamW learning rate (weight decay 1e-4).")
    batch_size: int = Field(16, ge=1, description="Images per step.")

    def optim(self) -> OptimConfig:
        """The heads' training settings."""
        return fixed_budget(self.lr, 1e-4, self.epochs, self.batch_size)


class ObjectivesBenchConfig(AdaptorExperimentConfig):
    """``retune adaptor bench``: pre-train every mix with every seed on one patient split, evaluate each alike."""

    mixes: dict[str, MixSpec] = Field(
        default_factory=lambda: {"clip": {"clip": 1.0}},
        description="Named objective mixes to compare, e.g. {clip: {clip: 1}, flip: {masked: {ratio: 0.5}}}.",
    )
    objectives: MixSpec | None = Field(
        None, description="One mix to run instead of `mixes`, e.g. {clip: 1.0, caption: 0.5, masked: {ratio: 0.5}}."
    )
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1, description="Pre-training seeds.")
    pairs: PairsConfig = PairsConfig()
    prompts: str = Field("manual", description="Prompt set (or YAML) for zero-shot classification.")
    image_token_dim: int | None = Field(
        None,
        ge=1,
        description="Project the cached image tokens onto their top principal components (fitted on training images "
        "only, saved with each run) before the adaptor: a frozen, cheaper input; null keeps the tower's width.",
    )
    itm_weight: float = Field(0.0, ge=0.0, description="Not used by the bench: mixes name their losses.")
    fusion_layers: int = Field(0, ge=0, description="Not used by the bench (no ITM branch).")
    optim: OptimConfig = OptimConfig(
        lr=3e-4, weight_decay=0.05, epochs=10, batch_size=64, patience=10, min_epochs=10, early_stopping="loss"
    )
    vqa: BenchVqaTask | None = Field(None, description="VQA accuracy with each adaptor as the fusion module.")
    segmentation: BenchSegmentationTask | None = Field(
        None, description="Dice of a linear head on each adaptor's image token states."
    )

    @field_validator("mixes")
    @classmethod
    def _valid_mixes(cls, value: dict[str, MixSpec]) -> dict[str, MixSpec]:
        if not value:
            raise ValueError("give at least one mix")
        for name, mix in value.items():
            try:
                parse_mix(mix)
            except ValueError as error:
                raise ValueError(f"mixes.{name}: {error}") from None
        return value

    @field_validator("objectives")
    @classmethod
    def _valid_objectives(cls, value: MixSpec | None) -> MixSpec | None:
        if value is not None:
            parse_mix(value)
        return value

    def mix_specs(self) -> dict[str, MixSpec]:
        """The mixes to run: ``objectives`` alone (named by its objectives joined with '+') when given, else
        ``mixes``."""
        return {"+".join(self.objectives): self.objectives} if self.objectives else self.mixes

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value) or min(value) < 0:
            raise ValueError(f"seeds must be distinct and non-negative, got {value}")
        return value
