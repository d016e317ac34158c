"""(2) Embedding extraction on real-size inputs: ``embed_table`` (what ``retune embed`` runs) against a naive loop
and against the encoder's own forward limit, measured in the same run.

Inputs are real NIH images from ``../shared`` in the three forms users have: the shared 256 px PNGs, the same
images written as 1024 px PNGs (the NIH originals' size) and as 2048 px 16-bit DICOMs (12 bits stored, as
CheXpert/MIMIC-class scanners write them). They are written once into ``benchmarks/work/embed-inputs`` (git-ignored)
and reused. Per input kind: images/s of the naive loop (one image at a time, decoded in the main thread, timm's
default memory layout, as a first script does) and of ``embed_table`` into a fresh store (hashing, decoding,
encoding and Parquet writes all counted), interleaved. The encoder limit is ``encode_in_chunks`` (embed's own
encoder call) over already decoded, preprocessed pixels: what embedding would reach if decoding were free.

On CUDA (``--device cuda`` or when present) the same comparisons run on the GPU: pinned-memory DataLoader,
``non_blocking`` copies, ``channels_last`` and bf16 autocast (fp16 where bf16 is unsupported).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from benchmarks.common import NIH_CSV, Context, median, target, timed

NAME = "embed"
KINDS = ("png256", "png1024", "dicom2048")
PNG_KINDS = ("png256", "png1024")


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


def write_png(source: Path, target_path: Path, size: int) -> None:
    """Bicubic upsampled 8-bit greyscale PNG at ``size`` x ``size``."""
    with Image.open(source) as image:
        image.convert("L").resize((size, size), Image.BICUBIC).save(target_path)


def write_dicom(source: Path, target_path: Path, size: int) -> None:
    """A 16-bit DICOM (12 bits stored, MONOCHROME2, uncompressed) of the image upsampled to ``size`` x ``size``."""
    from retune.data.phantoms import dicom_dataset

    with Image.open(source) as image:
        grey = np.asarray(image.convert("F").resize((size, size), Image.BICUBIC))
    pixels = np.clip(np.rint(grey * (4095 / 255)), 0, 4095).astype(np.uint16)
    dicom_dataset(pixels, bits_stored=12).save_as(target_path, enforce_file_format=True)


def prepare_inputs(ctx: Context, originals: list[Path]) -> dict[str, list[Path]]:
    """The three input kinds of the same images; the written copies are kept in the workdir for later runs."""
    inputs = {"png256": originals}
    for kind, suffix, writer, size in (("png1024", ".png", write_png, 1024), ("dicom2048", ".dcm", write_dicom, 2048)):
        folder = ctx.workdir / "embed-inputs" / kind
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / (source.stem + suffix) for source in originals]
        missing = [(source, path) for source, path in zip(originals, paths) if not path.exists()]
        if missing:
            ctx.log(f"writing {len(missing)} {kind} inputs into {folder}")
        for source, path in missing:
            temp = path.with_name(f".tmp-{path.name}")  # keeps the suffix, which PIL picks the format by
            writer(source, temp, size)
            temp.replace(path)
        inputs[kind] = paths
    return inputs


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


def embed_run(
    paths: list[Path], backbone, scratch: Path, batch_size: int, workers: int | None
) -> tuple[float, np.ndarray]:
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
            raise RuntimeError(f"embed_table computed {summary.n_computed} of {len(paths)} images: {summary.line()}")
        vectors, _ = image_embeddings(table, backbone.fingerprint, store)
        return seconds, vectors
    finally:
        shutil.rmtree(root, ignore_errors=True)


def encoder_limit_seconds(backbone, pixels: torch.Tensor, batch_size: int) -> float:
    """Seconds to encode already preprocessed pixels the way ``embed_table`` calls the encoder (no decoding)."""
    from retune.store.embed import encode_in_chunks

    def encode_all() -> None:
        for start in range(0, len(pixels), batch_size):
            encode_in_chunks(backbone, pixels[start:start + batch_size], tokens=False).pooled.cpu()
        if backbone.device.type == "cuda":
            torch.cuda.synchronize()

    return timed(encode_all)[0]


def cpu_costs(
    paths: list[Path], backbone, pixels: torch.Tensor, encoder_images_per_second: float, n_images: int = 24
) -> dict:
    """Process-CPU milliseconds per image, one thread, main process: hashing, decoding + preprocessing, encoding.

    On a machine with ``cores`` cores, embedding can at best reach cores / (hash + decode + encode) images/s, with
    encode the CPU-milliseconds the encoder limit spends on all cores (cores x 1000 / its images/s: batched,
    multi-threaded encoding costs less per image than one thread does); when decoding costs as much as encoding,
    that bound, not the encoder's, is what ``embed_table`` can approach. ``embed_table`` on CPU runs one
    one-thread decode-and-encode pipeline per core, so it can reach at most cores / (hash + decode + one-thread
    encode) images/s (``one_thread_pipelines_bound_images_per_second``): the two bounds differ by how much less
    CPU the encoder spends per image on all cores than on one.
    """
    import time

    from retune.data.images import file_content_hash, load_image
    from retune.devices import usable_cores
    from retune.store.embed import CPU_ENCODE_CHUNK, encode_in_chunks

    sample = paths[:n_images]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        encode_in_chunks(backbone, pixels[:CPU_ENCODE_CHUNK], tokens=False)  # one-thread kernels set up untimed
        costs = {}
        for name, work in (
            ("hash", lambda: [file_content_hash(path) for path in sample]),
            ("decode", lambda: [backbone.preprocess(load_image(path)) for path in sample]),
            ("encode", lambda: encode_in_chunks(backbone, pixels[: len(sample)], tokens=False)),
        ):
            started = time.process_time()
            work()
            costs[f"{name}_cpu_ms_per_image"] = (time.process_time() - started) * 1000 / len(sample)
    finally:
        torch.set_num_threads(threads)
    cores = usable_cores()
    costs["cores"] = cores
    costs["encoder_limit_cpu_ms_per_image"] = cores * 1000 / encoder_images_per_second
    read = costs["hash_cpu_ms_per_image"] + costs["decode_cpu_ms_per_image"]
    costs["all_cores_bound_images_per_second"] = cores * 1000 / (read + costs["encoder_limit_cpu_ms_per_image"])
    costs["one_thread_pipelines_bound_images_per_second"] = cores * 1000 / (read + costs["encode_cpu_ms_per_image"])
    return costs


class PlanLog(logging.Handler):
    """Collects the CPU plan ``embed_table`` logs (which of its two plans ran, and the costs it chose by)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.plans: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.plans.append(record.getMessage())


def compare(paths: list[Path], backbone, scratch: Path, repeats: int, batch_size: int, pixels: torch.Tensor) -> dict:
    """Naive loop, ``embed_table`` and the encoder limit interleaved ``repeats`` times on the same images."""
    naive_seconds, embed_seconds, limit_seconds = [], [], []
    naive_vectors = embed_vectors = None
    plan_log, logger = PlanLog(), logging.getLogger("retune.store.embed")
    level = logger.level
    logger.addHandler(plan_log)
    logger.setLevel(logging.INFO)
    try:
        for _ in range(repeats):
            seconds, naive_vectors = timed(lambda: naive_loop(paths, backbone))
            naive_seconds.append(seconds)
            seconds, embed_vectors = embed_run(paths, backbone, scratch, batch_size, None)
            embed_seconds.append(seconds)
            limit_seconds.append(encoder_limit_seconds(backbone, pixels, batch_size))
    finally:
        logger.removeHandler(plan_log)
        logger.setLevel(level)
    n = len(paths)
    return {
        "images": n,
        "naive_seconds": naive_seconds,
        "embed_seconds": embed_seconds,
        "encoder_limit_seconds": limit_seconds,
        "naive_images_per_second": n / median(naive_seconds),
        "embed_images_per_second": n / median(embed_seconds),
        "encoder_limit_images_per_second": n / median(limit_seconds),
        "embed_vs_naive": median(naive_seconds) / median(embed_seconds),
        "embed_vs_encoder_limit": median(limit_seconds) / median(embed_seconds),
        "embed_batch_size": batch_size,
        "max_abs_vector_difference": float(np.abs(naive_vectors - embed_vectors).max()),
        "embed_plans": plan_log.plans,
    }


def run(ctx: Context) -> dict:
    from retune.backbones.registry import create_backbone
    from retune.data.images import load_image
    from retune.devices import keep_freed_memory_for_reuse
    from retune.store.embed import default_workers

    # embed_table sets this at its first call; set before anything runs, the naive loop and the encoder limit run
    # with the same allocator throughout (the naive loop gains a little from it: a conservative baseline)
    reused = keep_freed_memory_for_reuse()

    n_images = 500 if ctx.quick else 1000
    repeats = 1 if ctx.quick else 2
    batch_size = 32
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    scratch = Path(tempfile.mkdtemp(prefix="retune-bench-embed-"))
    results: dict[str, dict] = {}
    try:
        originals = pick_images(n_images)
        n_images = len(originals)
        inputs = prepare_inputs(ctx, originals)
        for device in devices:
            backbone = create_backbone("default", device=device)
            pixels = torch.stack([backbone.preprocess(load_image(path)) for path in originals])
            if device == "cuda":
                pixels = pixels.pin_memory()
            for kind in KINDS:
                ctx.log(f"{device} {kind}: naive loop vs embed_table (batch {batch_size}, {default_workers()} "
                        f"workers) vs encoder limit, {n_images} images, {repeats} interleaved repeat(s)")
                result = compare(inputs[kind], backbone, scratch, repeats, batch_size, pixels)
                if device == "cpu":
                    result["cpu_costs"] = cpu_costs(
                        inputs[kind], backbone, pixels, result["encoder_limit_images_per_second"]
                    )
                    result["embed_vs_all_cores_bound"] = (
                        result["embed_images_per_second"] / result["cpu_costs"]["all_cores_bound_images_per_second"]
                    )
                results[f"{device}_{kind}"] = result
                ctx.log(
                    f"{device} {kind}: naive {result['naive_images_per_second']:.1f} img/s, embed "
                    f"{result['embed_images_per_second']:.1f} img/s, encoder limit "
                    f"{result['encoder_limit_images_per_second']:.1f} img/s -> {result['embed_vs_naive']:.2f}x naive, "
                    f"{result['embed_vs_encoder_limit']:.0%} of the limit; plan: {'; '.join(result['embed_plans'])}"
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ratios = {}
    for key, result in results.items():
        prefix = "" if key.startswith("cpu_") else "cuda_"
        kind = key.split("_", 1)[1]
        ratios[f"{prefix}embed_vs_naive_{kind}"] = result["embed_vs_naive"]
        ratios[f"{prefix}embed_vs_encoder_limit_{kind}"] = result["embed_vs_encoder_limit"]
        ratios[f"{prefix}embed_images_per_second_{kind}"] = result["embed_images_per_second"]
        if "cpu_costs" in result:
            bound = result["cpu_costs"]["all_cores_bound_images_per_second"]
            ratios[f"decode_cpu_ms_per_image_{kind}"] = result["cpu_costs"]["decode_cpu_ms_per_image"]
            ratios[f"embed_vs_all_cores_bound_{kind}"] = result["embed_vs_all_cores_bound"]
            ratios[f"embed_vs_one_thread_pipelines_bound_{kind}"] = (
                result["embed_images_per_second"] / result["cpu_costs"]["one_thread_pipelines_bound_images_per_second"]
            )
            # the most any pipeline can gain over the naive loop here: every core busy, no overhead at all
            ratios[f"all_cores_bound_vs_naive_{kind}"] = bound / result["naive_images_per_second"]
            ratios[f"all_cores_bound_vs_encoder_limit_{kind}"] = bound / result["encoder_limit_images_per_second"]
            pipelines = result["cpu_costs"]["one_thread_pipelines_bound_images_per_second"]
            ratios[f"one_thread_pipelines_bound_vs_naive_{kind}"] = pipelines / result["naive_images_per_second"]
            ratios[f"one_thread_pipelines_bound_vs_encoder_limit_{kind}"] = (
                pipelines / result["encoder_limit_images_per_second"]
            )
    cpu = [results[f"cpu_{kind}"] for kind in KINDS]
    ratios["encode_cpu_ms_per_image_1thread"] = median([r["cpu_costs"]["encode_cpu_ms_per_image"] for r in cpu])
    png = [results[f"cpu_{kind}"] for kind in PNG_KINDS]  # the two sizes of issue 16's goal
    worst_naive = min(r["embed_vs_naive"] for r in png)
    dicom_naive = results["cpu_dicom2048"]["embed_vs_naive"]
    worst_limit = min(r["embed_vs_encoder_limit"] for r in cpu)
    worst_difference = max(r["max_abs_vector_difference"] for r in results.values())

    def bounds(kind: str, versus: str, form: str) -> str:
        return (f"bounds {ratios[f'one_thread_pipelines_bound_vs_{versus}_{kind}']:{form}} one-thread pipelines, "
                f"{ratios[f'all_cores_bound_vs_{versus}_{kind}']:{form}} all cores")

    per_kind_naive = ", ".join(f"{k} {results[f'cpu_{k}']['embed_vs_naive']:.2f}x ({bounds(k, 'naive', '.2f')})"
                               for k in PNG_KINDS)
    per_kind_limit = ", ".join(f"{k} {r['embed_vs_encoder_limit']:.0%} ({bounds(k, 'encoder_limit', '.0%')})"
                               for k, r in zip(KINDS, cpu))
    return {
        "ratios": ratios,
        "targets": [
            target("embed_table / naive loop images/s on CPU, 256 px and 1024 px PNG (worse of the two)", worst_naive,
                   ">= 1.5", worst_naive >= 1.5, per_kind_naive),
            target("embed_table / naive loop images/s on CPU, 2048 px 16-bit DICOM", dicom_naive, ">= 1.5",
                   dicom_naive >= 1.5, bounds("dicom2048", "naive", ".2f")),
            target("embed_table / encoder-only limit on CPU (worst input kind)", worst_limit, ">= 0.8",
                   worst_limit >= 0.8, per_kind_limit),
            target("max |naive - embed_table| over every vector", worst_difference, "<= 1e-4",
                   worst_difference <= 1e-4),
        ],
        "params": {
            "backbone": "default", "images": n_images, "kinds": list(KINDS), "repeats": repeats,
            "batch_size": batch_size, "default_workers": default_workers(), "torch_threads": torch.get_num_threads(),
            "devices": devices, "glibc_keeps_freed_memory": reused,
            "naive": "one image at a time, main-thread decode, eager image_model.forward_features under no_grad, fp32",
            "encoder_limit": "encode_in_chunks over preprocessed pixels in batches of batch_size (no decoding)",
        },
        "timings": results,
    }
