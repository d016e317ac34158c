"""(7) ``retune serve`` under load: a bounded load test against 127.0.0.1 with real NIH images.

A RE-tune run (default backbone) is trained on the first NIH rows in the workdir (kept for later runs).
Two servers are started as ``retune serve`` subprocesses: batched (the defaults: 5 ms window, up to 32
images per encoder call) and unbatched (``--max-batch 1``), and both are warmed up at concurrency 16.
The batched one takes N predict requests at concurrency 1, 4 and 16 (throughput, p50/p95/p99 latency,
errors, server RSS before and after); then both take N requests at concurrency 16 in turn (A B A B),
and the ratio of their median throughputs is the batching speed-up. The batched server's RSS after
those pairs tells a leak (still growing under the same load) from caches filled once (a plateau).
Last, in this process, the scorer alone: 16 images one by one vs as one batch (what batching can
gain in the encoder, without HTTP). Every request uploads one real PNG;
only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import NIH_CSV, ROOT, Context, interleaved, median, target

NAME = "serve"
HOST = "127.0.0.1"
N_TRAIN_ROWS = 300
N_UPLOAD_IMAGES = 64


def train_nih_run(ctx: Context) -> Path:
    """A RE-tune run on the first NIH rows (embedded once into the workdir's store); reused when present."""
    run_dir = ctx.workdir / "serve-nih-run"
    from retune.config import TrainConfig
    from retune.experiments.run_folder import CHECKPOINT
    from retune.experiments.train import train_run

    if (run_dir / CHECKPOINT).exists():
        return run_dir
    frame = pd.read_csv(NIH_CSV, dtype=str, keep_default_na=False).head(N_TRAIN_ROWS)
    csv = ctx.workdir / f"serve-nih-{N_TRAIN_ROWS}.csv"  # paths stay relative to the shared image root
    frame.to_csv(csv, index=False)
    ctx.log(f"training a RE-tune run on {N_TRAIN_ROWS} NIH images (embedding them once)")
    train_run(
        TrainConfig.model_validate(
            {
                "data": {"csv": str(csv), "image_root": str(NIH_CSV.parent)},
                "store": str(ctx.workdir / "serve-store"),
                "n_bootstrap": 100,
                "retune": {"optim": {"epochs": 60}},
            }
        ),
        run_dir,
    )
    return run_dir


def upload_images() -> list[tuple[str, bytes]]:
    """Real NIH PNGs (from the end of the table: not the training rows), held in memory for the clients."""
    frame = pd.read_csv(NIH_CSV, dtype=str, keep_default_na=False).tail(N_UPLOAD_IMAGES)
    return [(Path(p).name, (NIH_CSV.parent / p).read_bytes()) for p in frame["path"]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class ServerProcess:
    """``retune serve RUN --host 127.0.0.1`` in a subprocess; its RSS read from /proc."""

    def __init__(self, run_dir: Path, extra: list[str]) -> None:
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "retune.cli",
                "serve",
                str(run_dir),
                "--host",
                HOST,
                "--port",
                str(self.port),
                *extra,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://{HOST}:{self.port}"

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with status {self.process.returncode}")
            try:
                if httpx.get(self.url + "/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server not ready after {timeout} s")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def health(self) -> dict:
        import httpx

        return httpx.get(self.url + "/v1/health", timeout=10).json()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def load(url: str, run: str, images: list[tuple[str, bytes]], n_requests: int, concurrency: int) -> dict:
    """``n_requests`` predict calls, ``concurrency`` in flight at a time: throughput, latency percentiles, errors."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    queue = iter(range(n_requests))

    async def client_loop(client: httpx.AsyncClient) -> None:
        for index in queue:
            name, data = images[index % len(images)]
            started = time.perf_counter()
            try:
                response = await client.post(
                    f"{url}/v1/runs/{run}/predict", files={"images": (name, data, "image/png")}
                )
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.text[:200]}")
            except httpx.HTTPError as error:
                errors.append(f"{type(error).__name__}: {error}")
            latencies.append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        began = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - began
    ms = np.asarray(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": n_requests,
        "seconds": round(seconds, 3),
        "requests_per_second": round(n_requests / seconds, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "errors": len(errors),
        "error_examples": errors[:3],
    }


def encoder_batching_gain(run_dir: Path, images: list[tuple[str, bytes]], repeats: int) -> dict:
    """In this process, without HTTP: seconds per image of the server's scorer on 16 preprocessed images,
    one call per image vs one call for all 16 (interleaved): what batching can gain in the encoder alone, with the
    allocator set as ``retune serve`` sets it."""
    import torch

    from retune.data.images import decode_image_bytes
    from retune.devices import keep_freed_memory_for_reuse
    from retune.experiments.inference import open_run

    keep_freed_memory_for_reuse()

    model = open_run(run_dir)
    pixels = torch.stack([model.backbone.preprocess(decode_image_bytes(data, name)) for name, data in images[:16]])
    model.score_pixels(pixels)  # warm-up of both shapes
    model.score_pixels(pixels[:1])
    seconds = interleaved(
        {
            "one_by_one": lambda: [model.score_pixels(pixels[i : i + 1]) for i in range(16)],
            "batch_16": lambda: model.score_pixels(pixels),
        },
        repeats,
    )
    per_image = {arm: median(values) / 16 * 1000 for arm, values in seconds.items()}
    return {
        "ms_per_image": {arm: round(v, 2) for arm, v in per_image.items()},
        "torch_threads": torch.get_num_threads(),
        "ratio": round(per_image["one_by_one"] / per_image["batch_16"], 2),
    }


def run(ctx: Context) -> dict:
    n_requests, repeats = (100, 1) if ctx.quick else (400, 2)
    run_dir = train_nih_run(ctx)
    images = upload_images()
    batched, unbatched = ServerProcess(run_dir, []), ServerProcess(run_dir, ["--max-batch", "1"])
    try:
        batched.wait_ready()
        unbatched.wait_ready()
        name = run_dir.name
        ctx.log("warm-up: 64 requests to each server at concurrency 16 (the largest batches the load test makes)")
        for server in (batched, unbatched):
            asyncio.run(load(server.url, name, images, 64, 16))
        rss_before = batched.rss_mb()
        levels = []
        for concurrency in (1, 4, 16):
            ctx.log(f"batched server: {n_requests} requests at concurrency {concurrency}")
            levels.append(asyncio.run(load(batched.url, name, images, n_requests, concurrency)))
            levels[-1]["server_rss_mb_after"] = round(batched.rss_mb(), 1)
            ctx.log(
                f"  {levels[-1]['requests_per_second']} req/s, p50 {levels[-1]['p50_ms']} ms, "
                f"p99 {levels[-1]['p99_ms']} ms, {levels[-1]['errors']} errors"
            )
        rss_after = batched.rss_mb()
        batching_stats = batched.health()["batching"][name]
        pairs = {"batched": [], "unbatched": []}
        for _ in range(repeats):
            for arm, server in (("batched", batched), ("unbatched", unbatched)):
                ctx.log(f"{arm}: {n_requests} requests at concurrency 16")
                pairs[arm].append(asyncio.run(load(server.url, name, images, n_requests, 16)))
        rss_steady = batched.rss_mb()
    finally:
        batched.stop()
        unbatched.stop()
    ctx.log("encoder alone, in process: 16 images one by one vs as one batch")
    encoder = encoder_batching_gain(run_dir, images, repeats=3 if ctx.quick else 5)
    throughput = {arm: median([r["requests_per_second"] for r in results]) for arm, results in pairs.items()}
    ratio = round(throughput["batched"] / throughput["unbatched"], 2)
    errors = sum(r["errors"] for r in levels) + sum(r["errors"] for results in pairs.values() for r in results)
    growth = round(rss_after - rss_before, 1)
    steady_growth = round(rss_steady - rss_after, 1)
    return {
        "ratios": {
            "serve_batched_vs_unbatched_throughput_c16": ratio,
            "encoder_batch16_vs_one_by_one_per_image": encoder["ratio"],
        },
        "figures": {
            **{f"serve_c{r['concurrency']}_requests_per_second": r["requests_per_second"] for r in levels},
            **{f"serve_c{r['concurrency']}_p99_ms": r["p99_ms"] for r in levels},
            "serve_errors": errors,
            "serve_rss_before_mb": round(rss_before, 1),
            "serve_rss_after_mb": round(rss_after, 1),
            "serve_rss_after_c16_pairs_mb": round(rss_steady, 1),
        },
        "targets": [
            target("batched vs unbatched throughput at concurrency 16", ratio, ">= 2", ratio >= 2),
            target("errors under load", errors, "== 0", errors == 0),
            target("server RSS growth over the levels c1, c4, c16 (MB)", growth, "< 100 (noise)", growth < 100),
            target(
                "server RSS growth over the repeated c16 pairs that follow (MB): a leak keeps growing",
                steady_growth,
                "< 20 (noise)",
                steady_growth < 20,
            ),
        ],
        "params": {
            "requests_per_level": n_requests,
            "repeats_c16_pair": repeats,
            "run": str(run_dir.relative_to(ROOT)) if run_dir.is_relative_to(ROOT) else str(run_dir),
            "backbone": "default (general-domain)",
            "upload_images": N_UPLOAD_IMAGES,
            "server_defaults": {"batch_window_ms": 5, "max_batch": 32},
            "host": HOST,
            "note": "client and servers share the same machine (2 cores, shared with other jobs)",
        },
        "encoder_alone": encoder,
        "levels": levels,
        "batching_counters_after_levels": batching_stats,
        "c16_pairs": pairs,
    }
