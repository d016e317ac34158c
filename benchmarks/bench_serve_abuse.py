"""(10) ``retune serve`` under abuse: a bounded memory and slow-client test against 127.0.0.1.

A tiny RE-tune run on 40 phantoms (kept in the workdir) is served by ``retune serve`` in a subprocess with its
defaults. Memory: one request holding 64 PNGs of 5,792 x 5,792 pixels (each within the per-image limits, 2 MB on the
wire) must be refused (413) before decoding, then 8 concurrent requests of 2 such images each (each within the
per-request budget) are answered 200 or 503; the server's peak RSS (VmHWM) must stay under a stated bound above
its RSS before. Slow clients: N connections send unfinished headers; meanwhile 20 health requests from other
clients must be answered (their statuses are recorded: unfinished requests do not count against ``max_requests``),
after the header deadline (10 s) the unfinished connections must be closed, and 20 more health requests answered.
Counts and times are bounded (about a minute); only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import asyncio
import io
import socket
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_serve import HOST, ServerProcess
from benchmarks.common import Context, median, target
from retune.server import ServeConfig

NAME = "serve_abuse"
SIDE = 5792  # the outside campaign's image side: 33.5 million pixels, within the per-image limit
PEAK_GROWTH_BOUND_MB = 2048  # the in-flight budget (2^28 pixels) decodes to ~0.8 GB of RGB, plus working copies
SERVED_WITH = ServeConfig()  # `retune serve` runs with these defaults
HEADER_DEADLINE_S = SERVED_WITH.header_timeout_s
MAX_REQUESTS = SERVED_WITH.max_requests


def phantom_run(ctx: Context) -> Path:
    """A small `retune train` run on phantoms in the workdir (reused when present)."""
    from retune.api import train
    from retune.data.phantoms import write_phantom_dataset

    run_dir = ctx.workdir / "abuse-phantom-run"
    if not (run_dir / "checkpoint.safetensors").exists():
        csv = write_phantom_dataset(ctx.workdir / "abuse-phantoms", n=40, seed=3)
        train(
            {"data": {"csv": str(csv)}, "store": str(ctx.workdir / "abuse-store"), "n_bootstrap": 10,
             "min_positives": 1, "retune": {"optim": {"epochs": 3, "min_epochs": 1}}},
            run_dir,
        )
    return run_dir


def large_png() -> bytes:
    """A black SIDE x SIDE greyscale PNG: about 30 KB on the wire, 33.5 million pixels decoded."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((SIDE, SIDE), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def peak_rss_mb(server: ServerProcess) -> float:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


async def post_images(url: str, run: str, images: list[bytes], n_requests: int) -> list[int]:
    """``n_requests`` concurrent predict calls, each uploading ``images``; their status codes."""
    import httpx

    files = [("images", (f"large{i}.png", data)) for i, data in enumerate(images)]
    async with httpx.AsyncClient(timeout=300) as client:
        responses = await asyncio.gather(
            *(client.post(f"{url}/v1/runs/{run}/predict", files=files) for _ in range(n_requests))
        )
    return [response.status_code for response in responses]


def health_calls(server: ServerProcess, n_calls: int = 20) -> tuple[dict[str, int], list[float]]:
    """``n_calls`` health requests one after another: how many got each status (or ``timeout``/``error``), and
    their latencies in seconds."""
    import httpx

    statuses, latencies = {}, []
    for _ in range(n_calls):
        started = time.perf_counter()
        try:
            status = str(httpx.get(server.url + "/v1/health", timeout=10).status_code)
        except httpx.TimeoutException:
            status = "timeout"
        except httpx.HTTPError:
            status = "error"
        latencies.append(time.perf_counter() - started)
        statuses[status] = statuses.get(status, 0) + 1
    return statuses, latencies


def slow_clients(server: ServerProcess, n_slow: int) -> dict:
    """Hold ``n_slow`` unfinished requests open, time 20 health calls meanwhile, count the slow ones closed after the
    header deadline, then make 20 more health calls."""
    slow = []
    for _ in range(n_slow):
        connection = socket.create_connection((HOST, server.port))
        connection.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Unfinished: ")
        slow.append(connection)
    try:
        during, latencies = health_calls(server)
        time.sleep(HEADER_DEADLINE_S + 2)
        closed = 0
        for connection in slow:
            connection.settimeout(5)
            try:
                closed += connection.recv(1024) == b""
            except OSError:
                closed += 1
    finally:
        for connection in slow:
            connection.close()
    after, _ = health_calls(server)
    return {"slow_connections": n_slow, "other_requests_served": during.get("200", 0), "other_requests": 20,
            "other_statuses": during, "other_p50_ms": round(1000 * median(latencies), 1),
            "other_max_ms": round(1000 * max(latencies), 1), "slow_closed_after_deadline": closed,
            "other_requests_served_after_deadline": after.get("200", 0)}


def run(ctx: Context) -> dict:
    from retune.server.limits import raise_open_files_limit

    n_slow = 200 if ctx.quick else 1100
    raise_open_files_limit()  # this process holds n_slow sockets: more than the usual 1,024 open files in full mode
    run_dir = phantom_run(ctx)
    image = large_png()
    server = ServerProcess(run_dir, [])
    try:
        server.wait_ready()
        name = run_dir.name
        rss_before = server.rss_mb()
        ctx.log(f"one request with 64 PNGs of {SIDE}x{SIDE} ({64 * len(image) / 2**20:.1f} MiB on the wire)")
        (big_status,) = asyncio.run(post_images(server.url, name, [image] * 64, 1))
        ctx.log("8 concurrent requests of 2 such PNGs each")
        statuses = asyncio.run(post_images(server.url, name, [image] * 2, 8))
        peak = peak_rss_mb(server)
        ctx.log(f"{n_slow} unfinished requests while 20 other requests are made")
        slow = slow_clients(server, n_slow)
    finally:
        server.stop()
    growth = round(peak - rss_before, 1)
    return {
        "figures": {
            "abuse_64_large_images_status": big_status,
            "abuse_concurrent_statuses": {str(code): statuses.count(code) for code in sorted(set(statuses))},
            "abuse_rss_before_mb": round(rss_before, 1),
            "abuse_peak_rss_mb": round(peak, 1),
            "abuse_peak_growth_mb": growth,
            **{f"abuse_{key}": value for key, value in slow.items()},
        },
        "targets": [
            target("64 large images in one request", big_status, "== 413", big_status == 413),
            target("concurrent large requests answered 200 or 503", statuses, "all in (200, 503)",
                   all(code in (200, 503) for code in statuses)),
            target("peak RSS growth (MB)", growth, f"<= {PEAK_GROWTH_BOUND_MB}", growth <= PEAK_GROWTH_BOUND_MB),
            target("other clients served during slow requests", slow["other_requests_served"], "== 20",
                   slow["other_requests_served"] == 20,
                   f"{n_slow} unfinished connections; at most {MAX_REQUESTS} requests answered at once "
                   "(ServeConfig.max_requests), which connections still sending headers do not count"),
            target("other clients served after the header deadline", slow["other_requests_served_after_deadline"],
                   "== 20", slow["other_requests_served_after_deadline"] == 20),
            target("slow connections closed after the header deadline", slow["slow_closed_after_deadline"],
                   f"== {n_slow}", slow["slow_closed_after_deadline"] == n_slow),
        ],
    }
