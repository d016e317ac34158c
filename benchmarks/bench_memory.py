"""(4) Peak RSS while training on 224k cached embeddings against the store's size on disk.

224k synthetic 1280-d vectors are written into a real ``EmbeddingStore`` (in 512-row shards, as
``retune embed`` writes them) and read back through ``read_vectors`` in a fresh subprocess that
then trains RE-tune on them (``ReTune.learn``), so the peak RSS is that of the read + training
alone (``VmHWM`` of the subprocess: ``ru_maxrss`` would carry the parent's size across exec).
Where the CPU trains in bf16 (the default precision ``auto``), the headline child reads the matrix as float16
(``read_vectors(dtype=np.float16)``); a second child keeps float32 and fp32 steps, for the side-by-side.
Two more subprocesses only read (with and without a key order) to show what the read path
itself costs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import NIH_FINDINGS, ROOT, Context, target
from retune.devices import bf16_supported

NAME = "memory"
FINGERPRINT = "5e7e7e7e7e7e7e7e"  # synthetic backbone
IMAGE_DIM = 1280
SHARD_ROWS = 512


def row_key(row: int) -> str:
    return hashlib.sha256(f"synthetic-image-{row}".encode()).hexdigest()


def write_store(root: Path, n_rows: int, seed: int = 0) -> dict:
    """Fill a fresh store with ``n_rows`` synthetic vectors; returns sizes and timing."""
    from retune.store import EmbeddingStore

    if root.exists():
        shutil.rmtree(root)
    store = EmbeddingStore(root)
    store.register_backbone(
        {
            "fingerprint": FINGERPRINT,
            "spec": "synthetic",
            "image_dim": IMAGE_DIM,
            "text_dim": 384,
            "aligned": False,
            "parts": {},
        }
    )
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    for start in range(0, n_rows, SHARD_ROWS):
        stop = min(n_rows, start + SHARD_ROWS)
        vectors = rng.standard_normal((stop - start, IMAGE_DIM), dtype=np.float32)
        store.write_vectors("images", FINGERPRINT, [row_key(r) for r in range(start, stop)], vectors)
    seconds = time.perf_counter() - started
    shards = store.shards("images", FINGERPRINT)
    return {
        "rows": n_rows,
        "shards": len(shards),
        "vector_bytes_on_disk": sum(s.stat().st_size for s in shards),
        "store_bytes": sum(p.stat().st_size for p in root.rglob("*") if p.is_file()),
        "raw_float32_bytes": n_rows * IMAGE_DIM * 4,
        "write_seconds": seconds,
    }


def child(args: argparse.Namespace) -> dict:
    """Runs in its own process: read the vectors (and train), report peak RSS after each phase."""
    import torch

    from benchmarks.common import peak_rss_bytes, rss_bytes

    torch.set_num_threads(args.threads)
    from benchmarks.bench_training import method_context, retune_config
    from retune.methods.base import TaskData
    from retune.methods.registry import create_method
    from retune.store import EmbeddingStore

    report = {"phase": args.phase, "after_imports": {"rss": rss_bytes(), "peak": peak_rss_bytes()}}
    if args.phase == "train":
        # The runtime a training process carries whatever its data: the method's imports (sklearn, pandas,
        # pyarrow), torch.optim's first use (it imports torch._dynamo) and the kernels' code pages, via one
        # learn() on 64 random rows.
        warm = create_method("retune", method_context(), retune_config(1, 4096))
        rng = np.random.default_rng(2)
        warm.learn(TaskData(tuple(NIH_FINDINGS), rng.standard_normal((64, IMAGE_DIM), dtype=np.float32),
                            (rng.random((64, len(NIH_FINDINGS))) < 0.5).astype(np.float32)))
        del warm
        report["after_runtime"] = {"rss": rss_bytes(), "peak": peak_rss_bytes()}
    store = EmbeddingStore(args.store, create=False)
    keys = [row_key(r) for r in range(args.rows)] if args.phase != "read-all" else None
    started = time.perf_counter()
    _, matrix = store.read_vectors("images", FINGERPRINT, keys, dtype=np.dtype(args.matrix_dtype).type)
    report["read_seconds"] = time.perf_counter() - started
    del keys
    report["after_read"] = {"rss": rss_bytes(), "peak": peak_rss_bytes(), "matrix_bytes": int(matrix.nbytes)}
    if args.phase == "train":
        rng = np.random.default_rng(1)
        labels = (rng.random((len(matrix), len(NIH_FINDINGS))) < 0.1).astype(np.float32)
        config = retune_config(args.epochs, args.batch_size, args.precision)
        method = create_method("retune", method_context(), config)
        started = time.perf_counter()
        method.learn(TaskData(tuple(NIH_FINDINGS), matrix, labels))
        report["train_seconds"] = time.perf_counter() - started
        parameters = [p for p in method.model.parameters()]
        trainable = sum(p.numel() * p.element_size() for p in parameters if p.requires_grad)
        weights = sum(p.numel() * p.element_size() for p in parameters) + sum(
            b.numel() * b.element_size() for b in method.model.buffers()
        )
        report["model_bytes"] = {
            "weights_and_buffers": weights,
            "adamw_state": 2 * trainable,
            "gradients": trainable,
            "total": weights + 3 * trainable,
        }
        report["after_train"] = {"rss": rss_bytes(), "peak": peak_rss_bytes()}
    return report


def run_child(
    ctx: Context, store_root: Path, n_rows: int, phase: str, epochs: int, matrix_dtype: str = "float32",
    precision: str = "fp32",
) -> dict:
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_memory",
        "--child",
        "--store",
        str(store_root),
        "--rows",
        str(n_rows),
        "--phase",
        phase,
        "--epochs",
        str(epochs),
        "--batch-size",
        "4096",
        "--threads",
        str(ctx.threads or 1),
        "--matrix-dtype",
        matrix_dtype,
        "--precision",
        precision,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"memory child ({phase}) failed: "
            f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(ctx: Context) -> dict:
    n_rows = 224_000
    epochs = 1
    store_root = ctx.workdir / "memory-store"
    ctx.log(f"writing {n_rows:,} synthetic vectors into a store ({SHARD_ROWS}-row shards)")
    store_facts = write_store(store_root, n_rows)
    ctx.log(
        f"store: {store_facts['store_bytes'] / 2**20:,.0f} MiB on disk in {store_facts['shards']} shards "
        f"({store_facts['write_seconds']:.1f} s)"
    )
    # The default precision (auto) trains under bf16 autocast where the CPU has it; its matmuls round inputs to
    # bf16 anyway, so the training matrix can be read as float16 (finer than bf16) at half the memory.
    compact = bf16_supported(torch.device("cpu"))
    setting = ("float16", "auto") if compact else ("float32", "fp32")
    try:
        training = run_child(ctx, store_root, n_rows, "train", epochs, *setting)
        full_width = run_child(ctx, store_root, n_rows, "train", epochs) if compact else training
        for label, facts in (("float16 matrix, bf16 autocast", training), ("float32 matrix, fp32", full_width)):
            ctx.log(
                f"read + train ({label}): peak RSS {facts['after_train']['peak'] / 2**20:,.0f} MiB (after read "
                f"{facts['after_read']['peak'] / 2**20:,.0f} MiB, "
                f"imports {facts['after_imports']['peak'] / 2**20:,.0f} MiB, "
                f"runtime {facts['after_runtime']['peak'] / 2**20:,.0f} MiB)"
            )
        read_keys = run_child(ctx, store_root, n_rows, "read-keys", epochs)
        read_all = run_child(ctx, store_root, n_rows, "read-all", epochs)
        ctx.log(
            f"read only: peak {read_keys['after_read']['peak'] / 2**20:,.0f} MiB with keys, "
            f"{read_all['after_read']['peak'] / 2**20:,.0f} MiB without"
        )
    finally:
        shutil.rmtree(store_root, ignore_errors=True)
    store_bytes = store_facts["store_bytes"]
    model_bytes = training["model_bytes"]["total"]
    peak = training["after_train"]["peak"]
    baseline = training["after_imports"]["peak"]
    runtime = training["after_runtime"]["peak"]
    ratio = peak / (store_bytes + model_bytes)
    ratios = {
        "peak_rss_vs_store_plus_model": ratio,
        "peak_rss_vs_store_plus_model_float32_matrix": full_width["after_train"]["peak"] / (store_bytes + model_bytes),
        "train_seconds_float32_matrix_fp32": full_width["train_seconds"],
        "train_seconds": training["train_seconds"],
        "peak_rss_above_imports_vs_store_plus_model": (peak - baseline) / (store_bytes + model_bytes),
        "peak_rss_above_runtime_vs_store_plus_model": (peak - runtime) / (store_bytes + model_bytes),
        "import_rss_vs_store": baseline / store_bytes,
        "runtime_rss_vs_store": runtime / store_bytes,
        "read_with_keys_peak_vs_store": (read_keys["after_read"]["peak"] - read_keys["after_imports"]["peak"])
        / store_bytes,
        "read_without_keys_peak_vs_store": (read_all["after_read"]["peak"] - read_all["after_imports"]["peak"])
        / store_bytes,
        "store_bytes_vs_raw_float32": store_bytes / store_facts["raw_float32_bytes"],
    }
    return {
        "ratios": ratios,
        "targets": [
            target(
                "peak RSS / (store size + model)",
                ratio,
                "<= 1.5",
                ratio <= 1.5,
                f"{setting[0]} training matrix, precision {setting[1]}; includes the interpreter, torch and the "
                f"method's runtime ({runtime / store_bytes:.2f}x the store by itself); the data's own cost: "
                "peak_rss_above_runtime_vs_store_plus_model",
            )
        ],
        "params": {
            "rows": n_rows,
            "image_dim": IMAGE_DIM,
            "shard_rows": SHARD_ROWS,
            "epochs": epochs,
            "batch_size": 4096,
            "matrix_dtype": setting[0],
            "precision": setting[1],
            "torch_threads": ctx.threads or 1,
            "measure": "peak RSS (VmHWM) of a fresh subprocess that reads through EmbeddingStore.read_vectors "
            "(keys in table order, as image_embeddings does) and runs ReTune.learn",
        },
        "store": store_facts,
        "timings": {
            "train_child": training,
            "train_child_float32_matrix": full_width,
            "read_with_keys_child": read_keys,
            "read_without_keys_child": read_all,
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--store", type=Path)
    parser.add_argument("--rows", type=int)
    parser.add_argument("--phase", choices=["train", "read-keys", "read-all"], default="train")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--matrix-dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32")
    arguments = parser.parse_args()
    print(json.dumps(child(arguments)))
