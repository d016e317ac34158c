"""(2) Embedding extraction: ``embed_table`` (what ``retune embed`` runs) against a naive loop.

Same images, same backbone (``default``), each ``embed_table`` run into a fresh store so nothing
is cached. The naive loop is how a first script does it: one image at a time, decoded in the main
thread, the eager model under ``no_grad``. Images are the shared NIH 256x256 ones and the same
images upsampled to the NIH originals' 1024x1024 (into a temp dir). Then the scaling of
``embed_table`` with decoding workers and batch size.

GPU path (not exercised on a CPU-only machine; when CUDA is present the benchmark adds CUDA rows):
the backbone is moved to CUDA, the DataLoader pins memory, ``encode_images`` copies pixels with
``non_blocking=True``, converts them to ``channels_last`` and runs under
``torch.autocast(bfloat16)`` (float16 where bf16 is unsupported), then casts pooled vectors to
float32 before they are stored.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from benchmarks.common import NIH_CSV, Context, median, target, timed

NAME = "embed"


def pick_images(n_images: int, size: int = 256, seed: int = 0) -> list[Path]:
    """``n_images`` shared NIH images of ``size`` x ``size`` pixels, seeded choice."""
    frame = pd.read_csv(NIH_CSV)
    paths = [NIH_CSV.parent / p for p in frame["path"]]
    rng = np.random.default_rng(seed)
    chosen = []
    for index in rng.permutation(len(paths)):
        with Image.open(paths[index]) as image:
            if image.size == (size, size):
                chosen.append(paths[index])
        if len(chosen) == n_images:
            break
    return chosen


def upsample(paths: list[Path], folder: Path, size: int = 1024) -> list[Path]:
    """Bicubic upsampled PNG copies at ``size`` x ``size`` (the NIH originals' size), same mode."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in paths:
        target_path = folder / path.name
        with Image.open(path) as image:
            image.resize((size, size), Image.BICUBIC).save(target_path)
        out.append(target_path)
    return out


def image_table(paths: list[Path]):
    from retune.data.table import PATH_COLUMN, PATIENT_COLUMN, ImageTable

    strings = [str(p.resolve()) for p in paths]
    return ImageTable(pd.DataFrame({PATH_COLUMN: strings, PATIENT_COLUMN: strings}), [])


def naive_loop(paths: list[Path], backbone) -> np.ndarray:
    """One image at a time, decoded in the main thread, the eager fp32 timm model as timm builds it
    (default memory format; retune keeps its copy channels_last) under no_grad."""
    import copy

    from retune.data.images import load_image

    model = copy.deepcopy(backbone.image_model).to(memory_format=torch.contiguous_format)
    vectors = []
    with torch.no_grad():
        for path in paths:
            pixels = backbone.preprocess(load_image(path)).unsqueeze(0).to(backbone.device)
            features = model.forward_features(pixels)
            vectors.append(features.float().mean(dim=(2, 3)).cpu().numpy())
    return np.concatenate(vectors)


def embed_run(paths: list[Path], backbone, scratch: Path, batch_size: int, workers: int) -> tuple[float, np.ndarray]:
    """Seconds of one ``embed_table`` call into a fresh store (hashing, decoding, encoding, writing)."""
    from retune.store import EmbeddingStore, embed_table, image_embeddings

    root = Path(tempfile.mkdtemp(prefix="store-", dir=scratch))
    try:
        store = EmbeddingStore(root)
        table = image_table(paths)
        seconds, summary = timed(
            lambda: embed_table(table, backbone, store, batch_size=batch_size, workers=workers, show_progress=False)
        )
        if summary.n_computed != len(paths):
            raise RuntimeError(f"embed_table computed {summary.n_computed} of {len(paths)} images")
        vectors, _ = image_embeddings(table, backbone.fingerprint, store)
        return seconds, vectors
    finally:
        shutil.rmtree(root, ignore_errors=True)


def compare(paths: list[Path], backbone, scratch: Path, repeats: int, batch_size: int, workers: int) -> dict:
    """Naive loop and embed_table interleaved ``repeats`` times on the same images."""
    naive_seconds, embed_seconds = [], []
    naive_vectors = embed_vectors = None
    for _ in range(repeats):
        seconds, naive_vectors = timed(lambda: naive_loop(paths, backbone))
        naive_seconds.append(seconds)
        seconds, embed_vectors = embed_run(paths, backbone, scratch, batch_size, workers)
        embed_seconds.append(seconds)
    n = len(paths)
    return {
        "images": n,
        "naive_seconds": naive_seconds,
        "embed_seconds": embed_seconds,
        "naive_images_per_second": n / median(naive_seconds),
        "embed_images_per_second": n / median(embed_seconds),
        "embed_vs_naive": median(naive_seconds) / median(embed_seconds),
        "embed_batch_size": batch_size,
        "embed_workers": workers,
        "max_abs_vector_difference": float(np.abs(naive_vectors - embed_vectors).max()),
    }


def run(ctx: Context) -> dict:
    from retune.backbones.registry import create_backbone
    from retune.store.embed import default_workers

    n_images = 48 if ctx.quick else 256
    repeats = 2 if ctx.quick else 3
    grid_batches = [8, 32] if ctx.quick else [1, 8, 32, 64]
    grid_workers = [0, 1] if ctx.quick else [0, 1, 2, 4]
    default_batch, workers = 32, default_workers()
    scratch = Path(tempfile.mkdtemp(prefix="retune-bench-embed-"))
    try:
        small = pick_images(n_images)
        n_images = len(small)
        ctx.log(f"upsampling {len(small)} NIH images to 1024x1024 in {scratch}")
        large = upsample(small, scratch / "1024")
        backbone = create_backbone("default", device="cpu")
        sets = {"256": small, "1024": large}
        headline = {}
        for label, paths in sets.items():
            ctx.log(
                f"{label}px: naive loop vs embed_table (batch {default_batch}, {workers} workers), {repeats} "
                "interleaved repeats"
            )
            headline[label] = compare(paths, backbone, scratch, repeats, default_batch, workers)
            ctx.log(
                f"{label}px: naive {headline[label]['naive_images_per_second']:.1f} img/s, embed "
                f"{headline[label]['embed_images_per_second']:.1f} img/s -> {headline[label]['embed_vs_naive']:.2f}x"
            )
        # The same comparison with one torch thread: on 2 cores the default (2 intra-op threads plus
        # a decoding worker) oversubscribes, which a machine shared with other work exaggerates.
        default_threads = torch.get_num_threads()
        one_thread = {}
        torch.set_num_threads(1)
        try:
            for label in ["256"] if ctx.quick else ["256", "1024"]:
                one_thread[label] = compare(sets[label], backbone, scratch, repeats, default_batch, workers)
                ctx.log(
                    f"{label}px, 1 torch thread: naive {one_thread[label]['naive_images_per_second']:.1f} img/s, "
                    f"embed {one_thread[label]['embed_images_per_second']:.1f} img/s -> "
                    f"{one_thread[label]['embed_vs_naive']:.2f}x"
                )
        finally:
            torch.set_num_threads(default_threads)
        scaling = {}
        grid_threads = [default_threads] if ctx.quick else list(dict.fromkeys([default_threads, 1]))
        for label in ["256"] if ctx.quick else ["256", "1024"]:
            rows = []
            for threads in grid_threads:
                torch.set_num_threads(threads)
                try:
                    for batch_size in grid_batches:
                        for n_workers in grid_workers:
                            seconds, _ = embed_run(sets[label], backbone, scratch, batch_size, n_workers)
                            rows.append(
                                {
                                    "torch_threads": threads,
                                    "batch_size": batch_size,
                                    "workers": n_workers,
                                    "seconds": seconds,
                                    "images_per_second": len(sets[label]) / seconds,
                                }
                            )
                            ctx.log(
                                f"{label}px threads {threads} batch {batch_size:>2} workers {n_workers}: "
                                f"{len(sets[label]) / seconds:.1f} img/s"
                            )
                finally:
                    torch.set_num_threads(default_threads)
            scaling[label] = rows
        gpu = {
            "available": torch.cuda.is_available(),
            "path": "CUDA: pinned-memory DataLoader, non_blocking copy, channels_last input, "
            "bf16 autocast (fp16 fallback), float32 pooled output",
        }
        if torch.cuda.is_available():
            cuda_backbone = create_backbone("default", device="cuda")
            gpu["compare_256"] = compare(small, cuda_backbone, scratch, repeats, 64, workers)
            gpu["compare_1024"] = compare(large, cuda_backbone, scratch, repeats, 64, workers)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ratio_256, ratio_1024 = headline["256"]["embed_vs_naive"], headline["1024"]["embed_vs_naive"]
    ratios = {
        "embed_vs_naive_256": ratio_256,
        "embed_vs_naive_1024": ratio_1024,
        "embed_images_per_second_256": headline["256"]["embed_images_per_second"],
        "embed_images_per_second_1024": headline["1024"]["embed_images_per_second"],
    }
    for label, result in one_thread.items():
        ratios[f"embed_vs_naive_{label}_threads1"] = result["embed_vs_naive"]
    for label, rows in scaling.items():  # the grid's own spread, measured back to back (not against the naive loop)
        ratios[f"grid_best_vs_workers0_batch8_{label}"] = max(r["images_per_second"] for r in rows) / next(
            r["images_per_second"]
            for r in rows
            if r["workers"] == 0 and r["batch_size"] == 8 and r["torch_threads"] == default_threads
        )
    if torch.cuda.is_available():
        ratios["cuda_embed_vs_naive_256"] = gpu["compare_256"]["embed_vs_naive"]
        ratios["cuda_embed_vs_naive_1024"] = gpu["compare_1024"]["embed_vs_naive"]
    worst = min(ratio_256, ratio_1024)
    return {
        "ratios": ratios,
        "targets": [
            target(
                "embed_table / naive loop images/s on CPU (worse of 256 and 1024 px)", worst, ">= 1.5", worst >= 1.5
            )
        ],
        "params": {
            "backbone": "default",
            "images": n_images,
            "repeats": repeats,
            "default_batch_size": default_batch,
            "default_workers": workers,
            "grid_batch_sizes": grid_batches,
            "grid_workers": grid_workers,
            "device": "cpu",
            "torch_threads": torch.get_num_threads(),
            "naive": "one image at a time, main-thread decode, eager image_model.forward_features under no_grad, fp32",
        },
        "timings": {"headline": headline, "headline_threads1": one_thread, "scaling": scaling},
        "gpu": gpu,
    }
