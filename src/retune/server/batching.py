"""Dynamic batching: images from concurrent requests share one encoder call.

The first queued image waits at most ``window`` seconds for others (up to ``max_batch``); the batch
is scored in one worker thread, so the event loop keeps accepting requests while the encoder runs.
All of a run's torch work (preprocessing, encoding, patch maps) runs in that one thread: concurrent
torch calls from several threads oversubscribe the cores (each brings its own intra-op threads).
The queue is bounded: a request that would overflow it is refused at once (503) instead of waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from retune.experiments.kinds import PixelScores


class QueueFull(Exception):
    """More images are waiting than the queue holds."""


@dataclass
class BatchStats:
    """Counters for the health endpoint and the benchmark: batches run and images scored."""

    batches: int = 0
    images: int = 0

    @property
    def mean_batch(self) -> float:
        return self.images / self.batches if self.batches else 0.0


class DynamicBatcher:
    """Groups single images queued by concurrent requests into encoder batches for one scorer."""

    def __init__(
        self, score: Callable[[list[Any]], PixelScores], window: float, max_batch: int, max_queue: int
    ) -> None:
        self.score = score
        self.window = window
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retune-encoder")

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def submit(self, images: list[Any]) -> list[PixelScores]:
        """Queue images (items of the list ``score`` takes) and wait for their scores (one ``PixelScores`` each)."""
        assert self._queue is not None, "DynamicBatcher.start() was not called"
        if self._queue.qsize() + len(images) > self.max_queue:
            raise QueueFull(
                f"server busy: {self._queue.qsize()} images queued (limit {self.max_queue}); retry shortly"
            )
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        for image, future in zip(images, futures, strict=True):
            self._queue.put_nowait((image, future))
        return list(await asyncio.gather(*futures))

    async def run_in_encoder_thread(self, function: Callable[[], Any]) -> Any:
        """Run other torch work of this run (a patch map) in the encoder's thread, between batches."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.window
            while len(batch) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0 and self._queue.empty():
                    break
                try:
                    batch.append(
                        self._queue.get_nowait()
                        if remaining <= 0
                        else await asyncio.wait_for(self._queue.get(), remaining)
                    )
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
            waiting = [(image, future) for image, future in batch if not future.cancelled()]
            if not waiting:
                continue
            try:
                scores = await loop.run_in_executor(self._executor, self.score, [image for image, _ in waiting])
            except Exception as error:  # a failing batch fails its requests, never the batcher
                for _, future in waiting:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.stats.batches += 1
            self.stats.images += len(waiting)
            for row, (_, future) in enumerate(waiting):
                if not future.done():
                    future.set_result(_row(scores, row))


def _row(scores: PixelScores, row: int) -> PixelScores:
    """One image's scores out of a batch's."""

    def pick(values):
        return None if values is None else np.asarray(values[row])

    return PixelScores(pick(scores.probabilities), pick(scores.positive), pick(scores.negative))
