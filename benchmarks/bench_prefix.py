"""(6) Partial freezing: training the unfrozen top of the image tower from cached prefix activations
against re-running the frozen blocks every step (same data, seed and epochs; results must agree).

Uses ``retune.peft_runs.compare_prefix_caching`` on NIH images with the default backbone and the
first 5 of its 7 EfficientNet stages frozen. The one-time cost of filling the cache is reported
separately (the first cached run pays it).
"""

from __future__ import annotations

import pandas as pd

from benchmarks.common import NIH_CSV, Context, target

NAME = "prefix"
FROZEN_STAGES = 5


def run(ctx: Context) -> dict:
    from retune.config import DataConfig, PeftExperimentConfig
    from retune.peft_runs import compare_prefix_caching

    n_images = 120 if ctx.quick else 400
    epochs = 1 if ctx.quick else 3
    frame = pd.read_csv(NIH_CSV).head(n_images)
    frame["path"] = [str(NIH_CSV.parent / p) for p in frame["path"]]
    csv = ctx.workdir / f"prefix-nih-{n_images}.csv"
    frame.to_csv(csv, index=False)
    config = PeftExperimentConfig(
        store=ctx.workdir / "prefix-store",
        data=DataConfig(csv=csv, classes=["Atelectasis", "Effusion", "Infiltration", "Pneumonia"]),
        method="freeze",
        tower="image",
        freeze_blocks=FROZEN_STAGES,
        epochs=epochs,
        n_bootstrap=0,
    )
    ctx.log(f"freeze-{FROZEN_STAGES}: warm the prefix cache, then cached vs uncached on {n_images} images x {epochs} epochs")
    compare_prefix_caching(config)  # fills the cache, so the measured cached arm reads it
    result = compare_prefix_caching(config)
    speedup = result["speedup"]
    return {
        "ratios": {"freeze_k_uncached_vs_cached_prefix": speedup},
        "figures": {"max_test_score_difference": result["max_test_score_difference"]},
        "targets": [target("partially-frozen training faster with the prefix cache", speedup, "> 1", speedup > 1)],
        "params": {"n_images": n_images, "epochs": epochs, "frozen_stages": FROZEN_STAGES, "backbone": "default"},
        "timings": result,
    }
