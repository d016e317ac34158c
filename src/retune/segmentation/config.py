"""The typed configuration of a segmentation run (``retune seg train``), loadable from YAML and saved with the run."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from retune.config import OptimConfig, SplitConfig, StrictModel

SegBaseline = Literal["predict_nothing", "scratch_unet"]


def _registered(value: str, registry: dict, what: str) -> str:
    """``value`` when ``registry`` has it, else the validation error listing the registered names."""
    if value not in registry:
        raise ValueError(f"unknown {what} '{value}'; valid: {', '.join(registry)}")
    return value


class SegDataConfig(StrictModel):
    """Where the images and masks are: a ``masks.csv`` (mask_* columns), a SIIM run-length CSV, or a mask folder."""

    csv: Path | None = Field(None, description="masks.csv, SIIM CSV (ImageId, EncodedPixels) or a folder of masks.")
    format: str = Field("auto", description="masks_csv, siim_rle, mask_folder or auto (from the layout).")
    image_root: Path | None = Field(None, description="Folder image paths resolve against (default: the CSV's).")

    @field_validator("format")
    @classmethod
    def _registered_format(cls, value: str) -> str:
        from retune.data.masks import MASK_READERS

        return value if value == "auto" else _registered(value, MASK_READERS, "mask format")


class SegOptimConfig(StrictModel):
    """AdamW on cached maps; the epoch with the best validation Dice is kept."""

    epochs: int = Field(20, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(16, ge=1)

    def loop_config(self) -> OptimConfig:
        """The one training loop's settings: every epoch runs (no early stop), fp32."""
        return OptimConfig(lr=self.lr, weight_decay=self.weight_decay, epochs=self.epochs, batch_size=self.batch_size,
                           patience=self.epochs, min_epochs=1, precision="fp32")


class SegmentationConfig(StrictModel):
    """Everything ``retune seg train`` needs; saved as the run's ``seg_config``."""

    backbone: str = "default"
    store: Path = Path("retune-store")
    data: SegDataConfig = SegDataConfig()
    structures: list[str] | None = Field(None, min_length=1, description="Structures to learn (default: all).")
    head: str = Field("fpn", description="A registered head: linear, fpn or text.")
    baselines: list[SegBaseline] = Field(
        default_factory=lambda: ["predict_nothing", "scratch_unet"],
        description="Trained and scored in the same command on the same split.",
    )
    label_fraction: float = Field(1.0, gt=0, le=1, description="Share of the training patients whose masks are used.")
    image_size: int = Field(256, ge=64, le=1024, multiple_of=32, description="Square input size of the encoder.")
    width: int = Field(64, ge=8, le=512, description="Decoder width (FPN channels), the scratch U-Net's too.")
    threshold: float = Field(0.5, gt=0, lt=1, description="Probability above which a pixel belongs to a structure.")
    hd95: bool = Field(True, description="Also score the 95th-percentile Hausdorff distance (the slowest score).")
    optim: SegOptimConfig = SegOptimConfig()
    split: SplitConfig = SplitConfig()
    seed: int = Field(0, ge=0)
    device: str | None = None
    n_bootstrap: int = Field(1000, ge=0)
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (default: a local file store in OUT).")

    @field_validator("head")
    @classmethod
    def _registered_head(cls, value: str) -> str:
        from retune.segmentation.heads import HEADS

        return _registered(value, HEADS, "head")
