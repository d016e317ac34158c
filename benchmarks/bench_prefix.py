"""(6) Partial freezing: training the unfrozen top of the image tower from cached prefix activations
against re-running the frozen blocks every step (same data, seed and epochs; results must agree).

Uses ``retune.experiments.peft.compare_prefix_caching`` on NIH images, twice: the default backbone with the
first 5 of its 7 EfficientNet stages frozen, and a ViT-B/16 open_clip image tower (BiomedCLIP's image
architecture) with 10 of its 12 blocks frozen. The ViT's weights are random (no hub here): its row
measures time only, never accuracy. The one-time cost of filling the cache is reported separately
(the first cached run pays it).
"""

from __future__ import annotations

import pandas as pd

from benchmarks.common import NIH_CSV, Context, target

NAME = "prefix"
CLASSES = ["Atelectasis", "Effusion", "Infiltration", "Pneumonia"]


def random_vit_b16(ctx: Context) -> str:
    """open_clip ViT-B-16 with seeded random weights in the workdir, loaded through the real ``NAME@/path`` source."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    weights = ctx.workdir / "vit-b16-random.safetensors"
    if not weights.exists():
        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-16", pretrained=None)
        save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(weights))
    return f"open_clip:ViT-B-16@{weights}"


def compare(ctx: Context, backbone: str, frozen: int, n_images: int, epochs: int) -> dict:
    from retune.config import DataConfig, PeftExperimentConfig
    from retune.experiments.peft import compare_prefix_caching

    frame = pd.read_csv(NIH_CSV).head(n_images)
    frame["path"] = [str(NIH_CSV.parent / p) for p in frame["path"]]
    csv = ctx.workdir / f"prefix-nih-{n_images}.csv"
    frame.to_csv(csv, index=False)
    config = PeftExperimentConfig(
        backbone=backbone,
        store=ctx.workdir / "prefix-store",
        data=DataConfig(csv=csv, classes=CLASSES, allow_outside_root=True),
        method="freeze",
        tower="image",
        freeze_blocks=frozen,
        epochs=epochs,
        n_bootstrap=0,
    )
    ctx.log(
        f"{backbone.split('@')[0]} freeze-{frozen}: warm the prefix cache, then cached vs uncached on {n_images} "
        f"images x {epochs} epochs"
    )
    compare_prefix_caching(config)  # fills the cache, so the measured cached arm reads it
    return compare_prefix_caching(config)


def run(ctx: Context) -> dict:
    n_images, epochs = (120, 1) if ctx.quick else (400, 3)
    default = compare(ctx, "default", 5, n_images, epochs)
    vit = compare(ctx, random_vit_b16(ctx), 10, n_images // 3, epochs)
    return {
        "ratios": {
            "freeze_k_uncached_vs_cached_prefix": default["speedup"],
            "vit_b16_freeze_10_uncached_vs_cached_prefix": vit["speedup"],
        },
        "figures": {
            "max_test_score_difference": default["max_test_score_difference"],
            "vit_b16_max_test_score_difference": vit["max_test_score_difference"],
        },
        "targets": [
            target(
                "partially-frozen training faster with the prefix cache (default, 5 of 7 stages frozen)",
                default["speedup"],
                "> 1",
                default["speedup"] > 1,
            ),
            target(
                "partially-frozen training faster with the prefix cache (ViT-B/16, 10 of 12 blocks frozen, random "
                "weights)",
                vit["speedup"],
                "> 1",
                vit["speedup"] > 1,
            ),
        ],
        "params": {
            "n_images": n_images,
            "vit_n_images": n_images // 3,
            "epochs": epochs,
            "default_frozen_stages": 5,
            "vit_frozen_blocks": 10,
        },
        "timings": {"default": default, "vit_b16_random_weights": vit},
    }
