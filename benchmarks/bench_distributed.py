"""(7) Scaling out on Ray: the Ray embed engine against the local one, 1 vs 2 encoder actors, and a
3-method x 3-order scenario sweep run sequentially against one Ray task per (method, order).

Every arm embeds the same NIH images (the first N rows of the shared labels.csv, default backbone) into a fresh
store; the Ray arms run on one local Ray instance (started once; its start-up is timed apart). The sweep arms read
the store the local arm wrote (nothing is embedded again) and must write identical results.json numbers. The
per-image costs feed the README's CheXpert / MIMIC-CXR projection. On a shared 2-core machine the absolute numbers
drift with other people's load: the ratios are measured back to back in one run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import NIH_CSV, Context, median, timed

NAME = "distributed"
SWEEP_CLASSES = ["Atelectasis", "Effusion", "Infiltration", "Nodule", "Mass", "No_Finding"]
ARCHIVES = {"CheXpert": 224_316, "MIMIC-CXR": 377_110}


def nih_subset(n_rows: int, folder: Path) -> Path:
    """The first ``n_rows`` NIH rows (paths relative to the NIH folder, read with it as the image root)."""
    frame = pd.read_csv(NIH_CSV, dtype=str, keep_default_na=False).head(n_rows)
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "labels.csv", index=False)
    return folder / "labels.csv"


def embed_arm(csv_path: Path, backbone, store_dir: Path, encoder) -> tuple[float, dict]:
    from retune.data.readers import read_table
    from retune.store import EmbeddingStore, embed_table

    seconds, summary = timed(
        lambda: embed_table(
            read_table(csv_path, image_root=NIH_CSV.parent),
            backbone,
            EmbeddingStore(store_dir),
            show_progress=False,
            encoder=encoder,
        )
    )
    keys, matrix = EmbeddingStore(store_dir).read_vectors("images", backbone.fingerprint)
    order = np.argsort(keys)
    return seconds, {"computed": summary.n_computed, "keys": [keys[i] for i in order], "matrix": matrix[order]}


def sweep_arm(csv_path: Path, store_dir: Path, out: Path, engine) -> tuple[float, dict]:
    from retune.scenarios.runner import run_scenario
    from retune.scenarios.spec import ScenarioConfig

    config = ScenarioConfig.model_validate(
        {
            "name": "bench-sweep",
            "store": str(store_dir),
            "data": {"csv": str(csv_path), "image_root": str(NIH_CSV.parent)},
            "generate": {"kind": "class", "n_tasks": 3, "classes": SWEEP_CLASSES},
            "methods": ["retune", "linear_probe", "naive"],
            "orders": [0, 1, 2],
            "n_bootstrap": 100,
        }
    )
    seconds, _ = timed(lambda: run_scenario(config, out, engine=engine))
    return seconds, {path.parent.name: json.loads(path.read_text()) for path in sorted(out.glob("*/results.json"))}


def run(ctx: Context) -> dict:
    import ray
    import torch

    from retune.backbones.registry import create_backbone
    from retune.distributed.ray_embed import ray_encoder
    from retune.distributed.ray_sweep import ray_sweep
    from retune.scenarios.runner import run_sequentially

    n_images = 120 if ctx.quick else 500
    repeats = 1 if ctx.quick else 2
    cores = os.cpu_count() or 1
    scratch = Path(tempfile.mkdtemp(prefix="retune-bench-distributed-", dir=ctx.workdir))
    try:
        csv_path = nih_subset(n_images, scratch)
        start_seconds, _ = timed(lambda: ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False))
        ctx.log(f"local Ray instance with {cores} CPUs started in {start_seconds:.1f}s")
        backbone = create_backbone("default", device="cpu")
        arms = {"local": None, "ray_1_actor": ray_encoder(actors=1), "ray_2_actors": ray_encoder(actors=2)}
        for path in pd.read_csv(csv_path)["path"]:  # warm the page cache: no arm pays for cold reads
            (NIH_CSV.parent / path).read_bytes()
        runs: dict[str, list[float]] = {name: [] for name in arms}
        stored = {}
        for repeat in range(repeats):  # arms interleaved, each into a fresh store; medians compared
            for name, encoder in arms.items():
                seconds, stored[name] = embed_arm(csv_path, backbone, scratch / f"store-{name}-{repeat}", encoder)
                runs[name].append(seconds)
                ctx.log(f"embed {name} (repeat {repeat + 1}/{repeats}): {n_images} images in {seconds:.1f}s")
        embed_seconds = {name: median(values) for name, values in runs.items()}
        for name in arms:
            if stored[name]["keys"] != stored["local"]["keys"] or stored[name]["computed"] != n_images:
                raise RuntimeError(f"{name} stored other images than the local engine")
        max_difference = max(float(np.abs(stored[name]["matrix"] - stored["local"]["matrix"]).max()) for name in arms)
        rerun_seconds, rerun = embed_arm(csv_path, backbone, scratch / "store-ray_1_actor-0", arms["ray_1_actor"])
        sweep_seconds, sweep_results = {}, {}
        for name, engine in {"sequential": run_sequentially, "ray": ray_sweep()}.items():
            sweep_seconds[name], sweep_results[name] = sweep_arm(
                csv_path, scratch / "store-local-0", scratch / f"sweep-{name}", engine
            )
            ctx.log(f"sweep {name}: 3 methods x 3 orders in {sweep_seconds[name]:.1f}s")
        identical = sweep_results["ray"] == sweep_results["sequential"]
        ray.shutdown()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    per_image = {name: seconds / n_images for name, seconds in embed_seconds.items()}
    two_actor_efficiency = embed_seconds["ray_1_actor"] / (2 * embed_seconds["ray_2_actors"])
    projection = {
        archive: {name: round(count * seconds / 3600, 2) for name, seconds in per_image.items()}
        for archive, count in ARCHIVES.items()
    }
    return {
        "ratios": {
            "ray_1_actor_vs_local_seconds": embed_seconds["ray_1_actor"] / embed_seconds["local"],
            "ray_2_actors_vs_1_actor_speedup": embed_seconds["ray_1_actor"] / embed_seconds["ray_2_actors"],
            "two_actor_scaling_efficiency": two_actor_efficiency,
            "sweep_ray_vs_sequential_speedup": sweep_seconds["sequential"] / sweep_seconds["ray"],
        },
        "figures": {
            "ray_start_seconds": start_seconds,
            "seconds_per_image_local": per_image["local"],
            "seconds_per_image_ray_1_actor": per_image["ray_1_actor"],
            "seconds_per_image_ray_2_actors": per_image["ray_2_actors"],
            "ray_rerun_computed": rerun["computed"],
            "ray_rerun_seconds": rerun_seconds,
            "max_abs_embedding_difference_vs_local": max_difference,
            "sweep_results_identical": identical,
        },
        "projection_hours_on_this_machine": projection,
        "params": {
            "repeats": repeats,
            "images": n_images,
            "backbone": "default (general-domain)",
            "cpus": cores,
            "torch_threads": torch.get_num_threads(),
            "sweep": "class-incremental, 3 tasks over 6 NIH classes, methods retune/linear_probe/naive, orders 0-2",
        },
        "timings": {"embed_seconds": embed_seconds, "sweep_seconds": sweep_seconds, "embed_seconds_per_repeat": runs},
    }
