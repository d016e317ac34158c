"""Segmentation decoder epochs on cached dense maps vs. running the frozen encoder in every epoch.

The same FPN head (``retune.segmentation``) trains for one epoch on cxr-seg images at 256 px (mask phantoms when the
shared data is absent) twice, interleaved after an untimed warm-up: once reading the store's float16 maps
(``retune.store.dense``), once decoding each image and running the default backbone's ``dense_features`` per batch, as
a pipeline without the cache would. The ratio of the two epochs' CPU seconds (one torch thread) is the cache's gain
(issue target: at least 20x); the wall-clock ratio is recorded beside it.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from benchmarks.common import DATA, ROOT, Context, median, target

NAME = "seg"
SIZE = 256
WIDTH = 32  # the decoder width of configs/seg-cxr.yaml


def _data(ctx: Context):
    from retune.data.masks import read_masks
    from retune.data.phantoms import write_mask_phantoms

    csv = DATA / "cxr-seg" / "masks.csv"
    if not csv.exists():
        csv = write_mask_phantoms(ctx.workdir / "seg-phantoms", n=64, size=SIZE)
    return read_masks(csv).only(["lungs"]), os.path.relpath(csv, ROOT)  # recorded relative to the repo


def run(ctx: Context) -> dict:
    from retune.backbones.registry import create_backbone
    from retune.experiments.segmentation import mask_targets
    from retune.segmentation.config import SegOptimConfig
    from retune.segmentation.heads import HeadInputs, create_head
    from retune.segmentation.training import fit
    from retune.store import EmbeddingStore
    from retune.store.dense import dense_features, dense_pixels

    torch.set_num_threads(ctx.threads or 2)
    n_images = 32 if ctx.quick else 96
    table, source = _data(ctx)
    table = table.subset(np.arange(min(n_images, len(table))))
    backbone = create_backbone("default", device="cpu")
    store = EmbeddingStore(ctx.workdir / "seg-store")
    cached = dense_features(table.paths, backbone, store, SIZE)  # fills the store once (not timed)
    targets = mask_targets(table, np.arange(len(table)), SIZE)
    rows, no_rows = np.arange(len(table)), np.array([], dtype=int)
    channels = tuple(m.shape[1] for m in cached.maps)

    def encoder_inputs(batch_rows: np.ndarray) -> list[torch.Tensor]:
        maps = backbone.dense_features(dense_pixels([table.paths[r] for r in batch_rows], backbone, SIZE))
        return [feature_map.clone() for feature_map in maps]  # out of inference mode, as the cache's are

    def epoch(inputs, epoch_rows: np.ndarray = rows) -> None:
        torch.manual_seed(0)
        head = create_head("fpn", HeadInputs(channels, 1, WIDTH))
        fit(head, inputs, targets, epoch_rows, no_rows, SegOptimConfig(epochs=1, batch_size=16).loop_config(), seed=0)

    arms = {"cached": lambda: epoch(cached.rows), "encoder": lambda: epoch(encoder_inputs)}
    epoch(cached.rows, rows[:2])  # warm-up, untimed: first-call imports (MONAI) and allocations
    epoch(encoder_inputs, rows[:2])
    cpu: dict[str, list[float]] = {name: [] for name in arms}
    wall: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(1 if ctx.quick else 2):  # interleaved: A B A B
        for name, arm in arms.items():
            started_cpu, started_wall = time.process_time(), time.perf_counter()
            arm()
            cpu[name].append(time.process_time() - started_cpu)
            wall[name].append(time.perf_counter() - started_wall)
    # CPU seconds (one torch thread): what each arm costs, even on a machine shared with other work
    ratio = median(cpu["encoder"]) / median(cpu["cached"])
    wall_ratio = median(wall["encoder"]) / median(wall["cached"])
    ctx.log(f"epoch of {len(table)} images, CPU seconds: cached {median(cpu['cached']):.2f}, encoder in the loop "
            f"{median(cpu['encoder']):.2f} ({ratio:.1f}x; wall clock {wall_ratio:.1f}x)")
    return {
        "ratios": {"encoder_in_loop_vs_cached_epoch": ratio, "wall_clock_encoder_in_loop_vs_cached_epoch": wall_ratio},
        "targets": [target("cached decoder epochs faster than running the encoder every epoch", ratio, ">= 20",
                           ratio >= 20)],
        "params": {"n_images": len(table), "size": SIZE, "head": "fpn", "width": WIDTH, "batch_size": 16,
                   "data": source},
        "timings": {"cached_cpu_s": cpu["cached"], "encoder_in_loop_cpu_s": cpu["encoder"],
                    "cached_wall_s": wall["cached"], "encoder_in_loop_wall_s": wall["encoder"]},
    }
